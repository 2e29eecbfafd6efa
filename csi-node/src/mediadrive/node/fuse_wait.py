"""How the agent waits for the kernel's next FUSE request.

pyfuse3's asyncio mode parks the loop in epoll between requests. A program that
works through files one call at a time (``stat`` of every file, ``ls -l``, a
build, an unpacker) sends its next request a few tens of microseconds after the
answer to the last, so every request paid two wake-ups of an idle thread: the
agent's and then the caller's. Polling the FUSE device for a moment after each
answer, before parking, takes the agent's out: ``stat`` of 1,000 files went from
about 60 to 30 µs a file.

The poll only runs while no request is being handled: a handler that waits (an
fsync on its put, a read on its fetch) leaves the loop and the GIL to what it
waits for.
"""

from __future__ import annotations

import select
import time
from collections.abc import Awaitable, Callable

import pyfuse3.asyncio

# Long enough for a caller to take an answer and send its next request; past it,
# the agent parks as before.
SPIN_SECONDS = 50e-6


class InFlight:
    """How many FUSE requests are being handled now, and how many have been."""

    def __init__(self) -> None:
        self.count = 0
        self.started = 0


HANDLING = InFlight()


def install(spin: float = SPIN_SECONDS) -> None:
    """Make pyfuse3 poll the FUSE device for ``spin`` seconds before it parks."""
    park: Callable[[int], Awaitable[None]] = pyfuse3.asyncio.wait_readable
    polls: dict[int, select.poll] = {}

    async def wait_readable(fd: int) -> None:
        if not HANDLING.count:
            poll = polls.get(fd)
            if poll is None:
                poll = polls[fd] = select.poll()
                poll.register(fd, select.POLLIN)
            deadline = time.perf_counter() + spin
            while time.perf_counter() < deadline:
                if poll.poll(0):
                    return
        await park(fd)

    # pyfuse3 looks the function up on this module at each wait (asyncio mode).
    pyfuse3.asyncio.wait_readable = wait_readable
