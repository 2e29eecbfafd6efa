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

pyfuse3's workers take turns at the device under a lock. With asyncio's lock, the
turn passes to the next worker in line at every release, so two workers
alternated request by request even when every handler answered at once, and each
request paid a trip through the event loop to switch tasks (about 7 µs a lookup,
a quarter of a ``stat``). ``ReadLock`` lets the worker that just answered take the
lock again if it is free: the other workers run when it waits on something.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType

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


class ReadLock:
    """A lock whose release wakes the first waiter without handing the lock over: a
    task that asks while it is free takes it, and a woken waiter that finds it taken
    waits again."""

    def __init__(self) -> None:
        self._locked = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self._locked

    async def acquire(self) -> bool:
        while self._locked:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                try:
                    await waiter
                finally:
                    self._waiters.remove(waiter)
            except asyncio.CancelledError:
                # A release may have woken this one: pass the turn on.
                if not self._locked:
                    self._wake_first()
                raise
        self._locked = True
        return True

    def release(self) -> None:
        if not self._locked:
            raise RuntimeError("ReadLock released while not held")
        self._locked = False
        self._wake_first()

    def _wake_first(self) -> None:
        # One woken waiter at a time: if the first has not run yet, it will look.
        if self._waiters and not self._waiters[0].done():
            self._waiters[0].set_result(None)

    async def __aenter__(self) -> None:
        if self._locked:
            await self.acquire()
        else:
            self._locked = True

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def install(spin: float = SPIN_SECONDS) -> None:
    """Make pyfuse3 poll the FUSE device for ``spin`` seconds before it parks, and
    take turns at it under a ``ReadLock``."""
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

    # pyfuse3 looks both up on this module (asyncio mode): the function at each
    # wait, the lock class when its first worker waits.
    pyfuse3.asyncio.wait_readable = wait_readable
    pyfuse3.asyncio.Lock = ReadLock  # type: ignore[assignment]
