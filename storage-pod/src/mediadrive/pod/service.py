"""One storage pod process: start, serve, drain on SIGTERM, exit.

``serve(settings)`` opens the chunk store, listens, announces the pod to its
peers and runs the probes and the TTL sweep in the background. On SIGTERM (or
SIGINT) it drains: ``/readyz`` answers 503, the pod leaves the region, hands
each held chunk to its owners among the remaining members, and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

from mediadrive.core.credentials import redact_url
from mediadrive.core.errors import ConfigError
from mediadrive.core.logs import JsonFormatter

from .server import Pod, make_app
from .settings import PodSettings
from .tokens import Tokens

log = logging.getLogger("mediadrive.pod")


class _Redacting(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_url(super().format(record))


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Redacting())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def _every(seconds: float, step: str, fn: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await fn()
        except Exception:
            log.exception("%s failed", step)


async def _sweep(pod: Pod) -> None:
    await pod.store.flush_uses()
    gone = await pod.store.sweep_expired()
    if gone:
        pod.metrics.expired.inc(gone)
        log.info("removed %d held chunk(s) whose TTL ended", gone, extra={"expired": gone})


async def _probe(pod: Pod) -> None:
    await pod.members.probe()
    pod.metrics.members_alive.set(len(pod.members.live()))


async def _repairs(pod: Pod) -> None:
    """Restore held copies each time a member is lost (once the view has settled)."""
    while True:
        await pod.members.lost.wait()
        await asyncio.sleep(pod.settings.probe_interval)
        pod.members.lost.clear()
        try:
            await pod.repair()
        except Exception:
            log.exception("repairing held copies failed")


def _reload_tokens(pod: Pod) -> None:
    """SIGHUP: read the token file again (tokens rotate without a restart)."""
    path = pod.settings.token_file
    if path is None:
        return
    try:
        pod.tokens = Tokens.load(path)
    except ConfigError as exc:
        log.error("keeping the tokens read before: %s", exc)
        return
    pod.members.token = pod.tokens.peer_token()
    log.info("token file %s read again: %d token(s)", path, len(pod.tokens.scopes))


def _open_parts(settings: PodSettings) -> Pod:
    tokens = Tokens.load(settings.token_file) if settings.token_file else None
    if tokens is None:
        log.warning(
            "no --token-file: this storage pod answers loopback clients only, without tokens"
        )
    elif tokens.peer_token() is None and (settings.peers or settings.peers_dns):
        log.warning("the token file has no `TOKEN *` line: peers will refuse this pod's requests")
    upstream = None
    if settings.upstream:
        from mediadrive.core.blob import open_store

        upstream = open_store(settings.upstream)
    return Pod(settings, tokens=tokens, upstream=upstream)


async def serve(settings: PodSettings) -> None:
    """Run a pod until SIGTERM/SIGINT, then drain and return."""
    pod = _open_parts(settings)
    await pod.store.open()
    runner = web.AppRunner(make_app(pod), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await pod.store.close()
        raise ConfigError(f"--listen {settings.listen}: cannot listen ({exc.strerror})") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload_tokens(pod))
    log.info(
        "storage pod %s serving region %s on %s",
        pod.members.self_url,
        settings.region,
        settings.listen,
        extra={"url": pod.members.self_url, "region": settings.region},
    )
    # Find the members now (the probe resolves --peers-dns) and join them, not one
    # probe interval later: until then this pod would own every chunk it is given.
    try:
        await pod.members.probe()
        await pod.members.announce()
    except Exception:
        log.exception("looking for members at start failed; the probes go on looking")
    tasks = [
        asyncio.create_task(
            _every(settings.probe_interval, "probing members", lambda: _probe(pod))
        ),
        asyncio.create_task(
            _every(settings.sweep_interval, "sweeping expired chunks", lambda: _sweep(pod))
        ),
        asyncio.create_task(_repairs(pod)),
    ]
    try:
        await stop.wait()
        await pod.drain()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()
        await pod.stop_adopting()
        await pod.members.close()
        await pod.store.close()
        if pod.upstream is not None:
            await pod.upstream.close()
    log.info("storage pod %s stopped", pod.members.self_url)
