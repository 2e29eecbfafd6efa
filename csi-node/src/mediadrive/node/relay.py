"""Reading a drive's events from a storage pod's relay (server-sent events).

The pod follows the drive's event log once for its whole region and streams it;
:func:`relay_events` yields the events after a sequence number from that stream. The
follower (:mod:`.follower`) uses it when the mount has a relay and falls back to
polling the metadata store when it fails.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
from pydantic import TypeAdapter, ValidationError

from mediadrive.core.meta import Event

__all__ = ["RelayError", "RelaySource", "SseParser", "relay_events"]

_EVENT_JSON = TypeAdapter(Event)
# Silence longer than this (the pod sends a keepalive every ~10 s) means the stream is dead.
DEFAULT_READ_TIMEOUT = 30.0


class RelayError(Exception):
    """The relay answered something other than an event stream."""


@dataclass(frozen=True)
class RelaySource:
    """Where a mount reads its drive's events: a pod's base URL and its token, if any."""

    url: str
    drive: str
    token_file: Path | None = None
    read_timeout: float = DEFAULT_READ_TIMEOUT

    def events_url(self) -> str:
        return f"{self.url.rstrip('/')}/v1/drives/{quote(self.drive, safe='')}/events"

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        token = read_token(self.token_file) if self.token_file is not None else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers


def read_token(path: Path) -> str | None:
    """The first token in ``path``: a bare token, or a pod token line ``TOKEN DRIVES``."""
    for line in path.read_text().splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            return words[0]
    return None


@dataclass
class SseMessage:
    id: str | None
    event: str
    data: str


class SseParser:
    """The server-sent events format, one line at a time (comments and retry ignored)."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SseMessage | None:
        """Take one line (without its end); a whole message when the line ends one."""
        if line == "":
            if not self._data:
                self._event = ""
                return None
            message = SseMessage(self._id, self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


def decode_event(message: SseMessage) -> Event:
    try:
        return _EVENT_JSON.validate_json(message.data)
    except (ValidationError, json.JSONDecodeError) as exc:
        raise RelayError(f"the relay sent an event that is not one: {exc}") from None


async def relay_events(
    session: aiohttp.ClientSession,
    source: RelaySource,
    since: int,
    on_open: Callable[[], None] | None = None,
) -> AsyncIterator[Event]:
    """The drive's events after ``since`` from the relay, as they come, until it fails.

    ``on_open`` is called once the relay has answered with an event stream.

    Raises :class:`RelayError` or an aiohttp/OS error when the stream cannot be had
    or breaks; ends (without error) only if the relay closes the stream.
    """
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=min(5.0, source.read_timeout), sock_read=source.read_timeout
    )
    async with session.get(
        source.events_url(),
        params={"since": str(since)},
        headers=source.headers(),
        timeout=timeout,
    ) as response:
        if response.status != 200:
            body = (await response.text())[:200]
            raise RelayError(f"{source.events_url()} answered {response.status}: {body}")
        kind = response.headers.get("Content-Type", "")
        if not kind.startswith("text/event-stream"):
            raise RelayError(f"{source.events_url()} answered {kind!r}, not an event stream")
        if on_open is not None:
            on_open()
        parser = SseParser()
        async for raw in response.content:
            message = parser.feed(raw.decode("utf-8").rstrip("\r\n"))
            if message is not None:
                yield decode_event(message)
