"""Chunks on the region's storage pods, over HTTP (``docs/storage-pods.md``).

URL: ``pod://HOST:PORT[,HOST:PORT...]/DRIVE[?token_file=FILE&tls=1]`` or
``http(s)://HOST:PORT/DRIVE[?token_file=FILE]``. Requests are spread over the
listed members and fail over to the next when one cannot be reached or is
draining; placement and replication are the pods' work. ``put`` holds a chunk
(no TTL); the :class:`~mediadrive.core.blob.holding.HoldingStore` methods say
how else to keep one. The token file's first word is the bearer token (a line
of the pods' own token file works as it is).
"""

from __future__ import annotations

import builtins
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from ..config import DRIVE_NAME
from ..credentials import redact_url
from ..errors import ConfigError, NotFound, StoreFull, StoreUnavailable
from . import BlobStore, register
from .holding import Holding

_OPTIONS = {"token_file", "tls"}
_SCHEMES = ("pod", "http", "https")


@dataclass(frozen=True)
class PodLocation:
    """Where a pod store URL points: member base URLs, the drive, the token file."""

    members: tuple[str, ...]
    drive: str
    token_file: str | None = None

    @staticmethod
    def handles(url: str) -> bool:
        """Whether ``url`` is a storage pod URL (other holding stores exist, in tests)."""
        return urlsplit(url).scheme in _SCHEMES

    @classmethod
    def parse(cls, url: str) -> PodLocation:
        shown = redact_url(url)
        parts = urlsplit(url)
        query = {
            name: values[-1]
            for name, values in parse_qs(parts.query, keep_blank_values=True).items()
        }
        unknown = set(query) - _OPTIONS
        if unknown:
            raise ConfigError(
                f"store URL {shown!r} has unknown option(s): {', '.join(sorted(unknown))}"
            )
        if parts.scheme not in _SCHEMES:
            raise ConfigError(f"store URL {shown!r} must start with pod://, http:// or https://")
        if parts.scheme != "pod" and "tls" in query:
            raise ConfigError(f"store URL {shown!r}: tls= is for pod:// URLs (use https://)")
        tls = query.get("tls", "0")
        if tls not in ("0", "1"):
            raise ConfigError(f"store URL {shown!r}: tls must be 0 or 1")
        hosts = parts.netloc.split(",") if parts.scheme == "pod" else [parts.netloc]
        if parts.scheme != "pod" and "," in parts.netloc:
            raise ConfigError(f"store URL {shown!r}: list several pods with pod://A,B/DRIVE")
        scheme = "https" if parts.scheme == "https" or tls == "1" else "http"
        members = tuple(f"{scheme}://{_host_port(shown, h)}" for h in hosts)
        drive = parts.path.strip("/")
        if not drive or not DRIVE_NAME.match(drive):
            raise ConfigError(
                f"store URL {shown!r} must end with a drive name (.../DRIVE): "
                "1-63 lowercase letters, digits, '.', '_' or '-'"
            )
        token_file = query.get("token_file")
        if token_file is not None and not token_file:
            raise ConfigError(f"store URL {shown!r}: token_file is empty")
        return cls(members, drive, token_file)


def _host_port(url: str, text: str) -> str:
    host, sep, port = text.rpartition(":")
    if "@" in text:
        raise ConfigError(f"store URL {url!r}: put the token in a token_file, not in the URL")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"store URL {url!r}: {text!r} is not HOST:PORT")
    return text


def check_pod_url(url: str) -> None:
    PodLocation.parse(url)


def _read_token(path: str, url: str) -> str:
    try:
        with open(path) as f:
            for line in f:
                words = line.split()
                if words and not words[0].startswith("#"):
                    return words[0]
    except OSError as exc:
        raise ConfigError(
            f"store URL {url!r}: cannot read token_file {path} ({exc.strerror})"
        ) from None
    raise ConfigError(f"store URL {url!r}: token_file {path} holds no token")


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def message(self) -> str:
        import json

        try:
            return str(json.loads(self.body)["error"])
        except (ValueError, KeyError, TypeError):
            return self.body.decode(errors="replace").strip()[:200] or f"HTTP {self.status}"


class PodBlobStore(BlobStore):
    """A drive's chunks on a region's storage pods; a HoldingStore."""

    # Ids per listing request; tests lower it to see several pages.
    page_size = 1000

    def __init__(self, url: str, location: PodLocation, *, create: bool = False) -> None:
        self.url = url
        self.location = location
        self.drive = location.drive
        self._create = create
        self._shown = redact_url(url)
        self._token = _read_token(location.token_file, self._shown) if location.token_file else None
        self._session: aiohttp.ClientSession | None = None
        self._next = itertools.count()

    @classmethod
    def from_url(cls, url: str, *, create: bool = False) -> PodBlobStore:
        return cls(url, PodLocation.parse(url), create=create)

    # -- requests ---------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=120),
                headers=headers,
            )
        return self._session

    def _order(self) -> list[str]:
        members = self.location.members
        start = next(self._next) % len(members)
        return [*members[start:], *members[:start]]

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | memoryview | None = None,
        json: Any = None,
    ) -> _Reply:
        """One request to the first member that answers; errors for refusals."""
        problem = "no member was tried"
        for member in self._order():
            try:
                async with self._http().request(
                    method,
                    f"{member}{path}",
                    params=params,
                    headers=headers,
                    data=data,
                    json=json,
                ) as resp:
                    reply = _Reply(resp.status, dict(resp.headers), await resp.read())
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{member}: {exc or type(exc).__name__}"
                continue
            if reply.status in (502, 503, 504):
                # Draining or cut off from its peers: another member may do.
                problem = f"{member}: {reply.message()}"
                continue
            self._raise_for(reply, member)
            return reply
        raise StoreUnavailable(f"no storage pod of {self._shown} answers ({problem})")

    def _raise_for(self, reply: _Reply, member: str) -> None:
        if reply.status in (401, 403):
            raise StoreUnavailable(
                f"storage pod {member} refused access to drive {self.drive} "
                f"({reply.status}: {reply.message()}); check the token_file of {self._shown}"
            )
        if reply.status == 507:
            raise StoreFull(f"storage pods of {self._shown} are full: {reply.message()}")
        if reply.status >= 500 or reply.status == 400:
            raise StoreUnavailable(
                f"storage pod {member} refused the request ({reply.status}: {reply.message()})"
            )

    def _chunk(self, chunk_id: str) -> str:
        return f"/v1/drives/{self.drive}/chunks/{chunk_id}"

    def _missing(self, chunk_id: str) -> NotFound:
        return NotFound(f"chunk {chunk_id} is not in {self._shown}")

    # -- the BlobStore contract ---------------------------------------------------------

    async def put(self, chunk_id: str, data: bytes | memoryview) -> None:
        await self.put_held(chunk_id, data)

    async def _put(self, chunk_id: str, data: bytes | memoryview, params: dict[str, str]) -> None:
        body = data if isinstance(data, bytes) else bytes(data)
        reply = await self._request("PUT", self._chunk(chunk_id), params=params, data=body)
        if reply.status != 201:
            raise StoreUnavailable(
                f"storage pods of {self._shown} did not store chunk {chunk_id} "
                f"({reply.status}: {reply.message()})"
            )

    async def get(self, chunk_id: str) -> bytes:
        reply = await self._request("GET", self._chunk(chunk_id))
        if reply.status == 404:
            raise self._missing(chunk_id)
        return reply.body

    async def get_range(self, chunk_id: str, offset: int, length: int) -> bytes:
        if length <= 0:
            # Still says whether the chunk is there, as other engines do.
            if not await self.exists(chunk_id):
                raise self._missing(chunk_id)
            return b""
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        reply = await self._request("GET", self._chunk(chunk_id), headers=headers)
        if reply.status == 404:
            raise self._missing(chunk_id)
        if reply.status == 416:
            return b""
        if reply.status == 200:  # a member that sent the whole chunk
            return reply.body[offset : offset + length]
        return reply.body

    async def exists(self, chunk_id: str) -> bool:
        reply = await self._request("HEAD", self._chunk(chunk_id))
        return reply.status == 200

    async def delete(self, chunk_id: str) -> None:
        await self._request("DELETE", self._chunk(chunk_id))

    async def list(self, prefix: str = "", after: str = "") -> AsyncIterator[str]:
        while True:
            params = {"prefix": prefix, "after": after, "limit": str(self.page_size)}
            reply = await self._request("GET", f"/v1/drives/{self.drive}/chunks", params=params)
            page = _json(reply)
            ids: builtins.list[str] = page["ids"]
            for chunk_id in ids:
                yield chunk_id
            # A page shorter than the limit the pod applied is the last.
            if not ids or len(ids) < int(page.get("limit", self.page_size)):
                return
            after = ids[-1]

    async def check(self) -> None:
        reply = await self._request("GET", f"/v1/drives/{self.drive}")
        if reply.status == 200:
            return
        if not self._create:
            raise StoreUnavailable(
                f"drive {self.drive} does not exist on the storage pods of {self._shown}"
            )
        await self._request("PUT", f"/v1/drives/{self.drive}")

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- the HoldingStore protocol --------------------------------------------------------

    async def put_held(
        self, chunk_id: str, data: bytes | memoryview, ttl: float | None = None
    ) -> None:
        params = {"hold": "1", **({"ttl": repr(float(ttl))} if ttl is not None else {})}
        await self._put(chunk_id, data, params)

    async def put_cached(self, chunk_id: str, data: bytes | memoryview) -> None:
        await self._put(chunk_id, data, {"hold": "0"})

    async def release(self, chunk_ids: Sequence[str]) -> None:
        if chunk_ids:
            await self._request(
                "POST", f"/v1/drives/{self.drive}/chunks/release", json={"ids": list(chunk_ids)}
            )

    async def holding(self, chunk_ids: Sequence[str]) -> dict[str, Holding]:
        if not chunk_ids:
            return {}
        reply = await self._request(
            "POST", f"/v1/drives/{self.drive}/chunks/holding", json={"ids": list(chunk_ids)}
        )
        body = _json(reply)
        found: dict[str, Holding] = {cid: "cached" for cid in body.get("cached", [])}
        found.update({cid: "held" for cid in body.get("held", [])})
        return found

    async def region(self) -> str:
        return str(_json(await self._request("GET", "/v1/stats"))["region"])


def _json(reply: _Reply) -> Any:
    import json

    try:
        return json.loads(reply.body)
    except ValueError:
        raise StoreUnavailable(f"a storage pod answered {reply.status} without JSON") from None


register("pod", PodBlobStore.from_url, check_pod_url)
register("http", PodBlobStore.from_url, check_pod_url)
register("https", PodBlobStore.from_url, check_pod_url)
