"""The event relay: the pod follows each drive's event log once and serves it to mounts.

Every mount of a drive used to poll the metadata store for the drive's events; with
thousands of mounts that is thousands of queries a second that mostly find nothing.
The relay runs one follow loop per drive (``events_after`` every ``poll`` seconds),
keeps the latest events in a bounded ring and streams them to any number of
subscribers as server-sent events::

    GET /v1/drives/{drive}/events?since=SEQ     (or a Last-Event-ID header)

    id: 42
    event: commit
    data: {"seq": 42, "kind": "commit", "path": "/shot/a.exr", ...}

A subscriber that asks for events older than the ring (a mount that was away) is
served from the metadata store once, then joins the live stream. Every subscriber
keeps its own cursor, so a slow one never holds back the others: when it falls
behind the ring it reads the gap from the store, as a new one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import Counter, Gauge
from pydantic import TypeAdapter

from mediadrive.core.meta import Event, MetaStore, connect

__all__ = [
    "DEFAULT_KEEPALIVE",
    "DEFAULT_POLL",
    "DEFAULT_RING",
    "EventRelay",
    "encode_event",
    "setup",
]

log = logging.getLogger(__name__)

DEFAULT_POLL = 0.3
DEFAULT_RING = 4096
DEFAULT_KEEPALIVE = 10.0
# Largest batch read from the store at once (a full batch is followed at once by the next).
BATCH = 1000
# Longest wait between two attempts to reach a metadata store that does not answer.
MAX_BACKOFF = 10.0

SUBSCRIBERS = Gauge(
    "mediadrive_pod_relay_subscribers", "Mounts streaming a drive's events", ["drive"]
)
EVENTS_RELAYED = Counter(
    "mediadrive_pod_relay_events", "Events sent to subscribers (once per subscriber)", ["drive"]
)
STORE_POLLS = Counter(
    "mediadrive_pod_relay_store_polls",
    "Reads of a drive's event log from the metadata store (follow loop and catch-ups)",
    ["drive"],
)
CATCHUPS = Counter(
    "mediadrive_pod_relay_catchups",
    "Reads from the metadata store for subscribers that asked for events older than the ring",
    ["drive"],
)

_EVENT_JSON = TypeAdapter(Event)


def encode_event(event: Event) -> bytes:
    """One server-sent event: ``id``, ``event`` and the Event as one line of JSON."""
    data = _EVENT_JSON.dump_json(event)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.kind.encode(), data)


@dataclass
class _Feed:
    """One drive's follow loop state: the ring covers every event in ``(floor, head]``."""

    name: str
    store: MetaStore
    ring: deque[Event]
    head: int | None = None
    floor: int = 0
    subscribers: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, batch: list[Event]) -> None:
        for event in batch:
            if len(self.ring) == self.ring.maxlen:
                self.floor = self.ring[0].seq
            self.ring.append(event)
            self.head = event.seq
        self.wake()

    def wake(self) -> None:
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()

    def after(self, seq: int) -> list[Event]:
        """Events of the ring after ``seq`` (the caller checked ``seq >= floor``)."""
        if not self.ring or self.ring[-1].seq <= seq:
            return []
        start = max(0, len(self.ring) - (self.ring[-1].seq - seq))
        while start > 0 and self.ring[start - 1].seq > seq:
            start -= 1
        while start < len(self.ring) and self.ring[start].seq <= seq:
            start += 1
        return [self.ring[i] for i in range(start, len(self.ring))]


class EventRelay:
    """Follows each drive's event log once and fans it out to subscribers."""

    def __init__(
        self,
        drives: dict[str, str],
        *,
        poll: float = DEFAULT_POLL,
        ring: int = DEFAULT_RING,
        keepalive: float = DEFAULT_KEEPALIVE,
    ) -> None:
        if ring < 1:
            raise ValueError("the event ring holds at least one event")
        self.poll = poll
        self.keepalive = keepalive
        self._ring_size = ring
        self._urls = dict(drives)
        self._feeds: dict[str, _Feed] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def drives(self) -> list[str]:
        return sorted(self._urls)

    def relays(self, drive: str) -> bool:
        return drive in self._urls

    def head(self, drive: str) -> int | None:
        """The latest event the relay has seen for ``drive`` (None before its first read)."""
        feed = self._feeds.get(drive)
        return feed.head if feed is not None else None

    async def start(self) -> None:
        """Open each drive's store and start its follow loop."""
        self._closing = False
        for name, url in self._urls.items():
            feed = _Feed(name, connect(url, name), deque(maxlen=self._ring_size))
            self._feeds[name] = feed
            self._tasks.append(asyncio.create_task(self._follow(feed), name=f"relay {name}"))

    async def stop(self) -> None:
        """End every stream and follow loop and close the stores."""
        self.close_streams()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for feed in self._feeds.values():
            with contextlib.suppress(Exception):
                await feed.store.close()
        self._feeds.clear()

    def close_streams(self) -> None:
        """Make every open stream end (the server is shutting down)."""
        self._closing = True
        for feed in self._feeds.values():
            feed.wake()

    # -- the follow loop ----------------------------------------------------------------

    async def _follow(self, feed: _Feed) -> None:
        backoff = self.poll
        while True:
            try:
                full = await self._follow_once(feed)
            except Exception as exc:
                log.warning("relay %s: cannot read the drive's events: %s", feed.name, exc)
                backoff = min(max(backoff * 2, 1.0), MAX_BACKOFF)
                await asyncio.sleep(backoff)
                continue
            backoff = self.poll
            if not full:
                await asyncio.sleep(self.poll)

    async def _follow_once(self, feed: _Feed) -> bool:
        """Read what is new into the ring; True if the batch was full (more may wait)."""
        STORE_POLLS.labels(feed.name).inc()
        if feed.head is None:
            feed.head = feed.floor = await feed.store.last_event_seq()
            feed.wake()
            return False
        batch = await feed.store.events_after(feed.head, limit=BATCH)
        if batch:
            feed.add(batch)
        return len(batch) == BATCH

    # -- subscribers --------------------------------------------------------------------

    async def _next_batch(self, feed: _Feed, cursor: int) -> list[Event]:
        """Events after ``cursor``: from the ring, or from the store if it is older."""
        if feed.head is None or cursor >= feed.floor:
            return feed.after(cursor) if feed.head is not None else []
        STORE_POLLS.labels(feed.name).inc()
        CATCHUPS.labels(feed.name).inc()
        batch = await feed.store.events_after(cursor, limit=BATCH)
        if not batch:
            # Nothing between the cursor and the ring (pruned): the ring follows on.
            return feed.after(feed.floor)
        return batch

    async def stream(
        self, request: web.Request, drive: str, since: int | None
    ) -> web.StreamResponse:
        """Serve ``drive``'s events after ``since`` (None: from now on) until the client leaves."""
        feed = self._feeds[drive]
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        feed.subscribers += 1
        SUBSCRIBERS.labels(drive).inc()
        try:
            await self._serve(feed, response, since)
        except ConnectionError:
            pass  # the client left
        except Exception as exc:
            # Most likely the store failed a catch-up read: end the stream, the mount
            # reconnects (or polls the store itself meanwhile).
            log.warning("relay %s: stream ended: %s", drive, exc)
        finally:
            feed.subscribers -= 1
            SUBSCRIBERS.labels(drive).dec()
        return response

    async def _serve(self, feed: _Feed, response: web.StreamResponse, since: int | None) -> None:
        cursor = since
        await response.write(b": relaying %s\n\n" % feed.name.encode())
        while not self._closing:
            changed = feed.changed
            if cursor is None:
                cursor = feed.head
            batch = await self._next_batch(feed, cursor) if cursor is not None else []
            if batch:
                await response.write(b"".join(encode_event(event) for event in batch))
                EVENTS_RELAYED.labels(feed.name).inc(len(batch))
                cursor = batch[-1].seq
                continue
            try:
                await asyncio.wait_for(changed.wait(), self.keepalive)
            except TimeoutError:
                await response.write(b": keepalive\n\n")


RELAY_KEY = web.AppKey("mediadrive_pod_relay", EventRelay)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _since(request: web.Request) -> int | web.Response | None:
    """The client's cursor: Last-Event-ID (a reconnect) before ``?since=``."""
    raw = request.headers.get("Last-Event-ID")
    name = "Last-Event-ID"
    if raw is None or not raw.strip():
        raw = request.query.get("since")
        name = "since"
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        return _error(400, f"{name} must be an event number, not {raw!r}")
    if value < 0:
        return _error(400, f"{name} must be 0 or more, not {value}")
    return value


async def _events(request: web.Request) -> web.StreamResponse:
    relay = request.app[RELAY_KEY]
    drive = request.match_info["drive"]
    if not relay.relays(drive):
        return _error(404, f"this pod does not relay the events of drive {drive!r}")
    since = _since(request)
    if isinstance(since, web.Response):
        return since
    return await relay.stream(request, drive, since)


def setup(
    app: web.Application,
    drives: dict[str, str],
    *,
    poll: float = DEFAULT_POLL,
    ring: int = DEFAULT_RING,
    keepalive: float = DEFAULT_KEEPALIVE,
) -> EventRelay:
    """Serve ``GET /v1/drives/{drive}/events`` on ``app`` for ``drives`` (name -> metadata URL).

    The follow loops start and stop with the app.
    """
    relay = EventRelay(drives, poll=poll, ring=ring, keepalive=keepalive)
    app[RELAY_KEY] = relay
    app.router.add_get("/v1/drives/{drive}/events", _events)

    async def on_startup(_: web.Application) -> None:
        await relay.start()

    async def on_shutdown(_: web.Application) -> None:
        relay.close_streams()

    async def on_cleanup(_: web.Application) -> None:
        await relay.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return relay
