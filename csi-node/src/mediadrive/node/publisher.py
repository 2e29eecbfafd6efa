"""The ``after DURATION`` publish policy of a mount: versions held in this machine's
storage pods for longer than DURATION are published in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mediadrive.core.drive import Drive
from mediadrive.core.errors import MediadriveError

log = logging.getLogger(__name__)

# How often due versions are looked for, at most (and at least once a second).
MAX_POLL = 60.0


def poll_interval(after: float) -> float:
    """A tenth of the policy's duration, between a second and a minute."""
    return min(max(after / 10, 1.0), MAX_POLL)


class Publisher:
    """Runs :meth:`Drive.publish_due` every :func:`poll_interval` while started; does
    nothing for a drive without such a policy, or a machine without pods."""

    def __init__(self, drive: Drive, interval: float | None = None) -> None:
        self.drive = drive
        after = drive.settings.tiers.publish_after
        self.enabled = after is not None and drive.tiers is not None
        self.interval = interval if interval is not None else poll_interval(after or 0.0)
        self.published = 0
        self.errors: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> int:
        """Publish what is due now; returns how many versions went."""
        result = await self.drive.publish_due()
        if result.versions:
            log.info(
                "published %d version(s) held longer than the policy allows: %d chunk(s) sent",
                result.versions,
                result.chunks_sent,
            )
        self.published += result.versions
        return result.versions

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except MediadriveError as exc:
                # The versions stay held in the pods; the next round tries again.
                self.errors = [*self.errors[-9:], str(exc)]
                log.warning("publishing due versions failed: %s", exc)
            await asyncio.sleep(self.interval)
