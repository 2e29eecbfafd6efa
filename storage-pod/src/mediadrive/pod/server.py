"""The pod's HTTP API (``docs/storage-pods.md``): chunks per drive, membership, health.

``Pod`` holds one pod's parts (its chunk store, its view of the region, its
upstream store) and does what needs more than one of them: replicated held
puts, reads that fall back to other members and then to the upstream, and the
hand-over of held chunks when the pod drains. ``make_app`` puts the HTTP
routes, the auth and the metrics in front of it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from mediadrive.core.blob import BlobStore
from mediadrive.core.config import DRIVE_NAME
from mediadrive.core.errors import MediadriveError, NotFound
from mediadrive.core.hashing import chunk_id as hash_chunk
from mediadrive.core.hashing import is_chunk_id

from . import relay
from .chunks import ChunkStore, Entry, PodFull
from .members import EXPIRES, FORWARDED, HOLDING, Membership, rank
from .metrics import PodMetrics
from .settings import PodSettings
from .tokens import ANY_DRIVE, Tokens, allows, bearer

log = logging.getLogger("mediadrive.pod")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LIST_LIMIT = 1000


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Pod:
    def __init__(
        self,
        settings: PodSettings,
        *,
        tokens: Tokens | None,
        upstream: BlobStore | None,
        metrics: PodMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.upstream = upstream
        self.metrics = metrics or PodMetrics()
        self.store = ChunkStore(settings.data, settings.capacity, on_evict=self.metrics.evicted)
        self.members = Membership(
            settings.self_url(),
            peers=settings.peers,
            peers_dns=settings.peers_dns,
            port=settings.port,
            token=tokens.peer_token() if tokens else None,
            timeout=max(1.0, min(5.0, settings.probe_interval)),
        )
        self.draining = False
        self._fetches: dict[tuple[str, str], asyncio.Future[bytes | None]] = {}
        self._short, self._short_logged = 0, float("-inf")
        self._adopting: dict[tuple[str, str], asyncio.Future[None]] = {}

    @property
    def replication(self) -> int:
        return self.settings.replication

    # -- held puts, replicated ------------------------------------------------------

    async def _put_on(
        self, member: str, drive: str, cid: str, data: bytes, ttl: float | None
    ) -> tuple[bool, str | None]:
        """Store a held copy on one member: (stored, why it is full if it is)."""
        if member == self.members.self_url:
            try:
                await self.store.put(drive, cid, data, held=True, ttl=ttl)
            except PodFull as exc:
                return False, str(exc)
            return True, None
        params = {"hold": "1", **({"ttl": repr(ttl)} if ttl is not None else {})}
        answer = await self.members.call(
            "PUT", member, f"/v1/drives/{drive}/chunks/{cid}", params=params, data=data
        )
        if answer is None:
            return False, None
        if answer.status == 201:
            return True, None
        message = _message(answer.body)
        log.warning("member %s refused chunk %s: %s", member, cid, message)
        return False, message if answer.status == 507 else None

    async def put_held(self, drive: str, cid: str, data: bytes, ttl: float | None) -> int:
        """Store a held chunk on its R owners among the live members; how many have it.

        Members that fail are replaced by the next in rank. PodFull when every
        member that answered is full and none stored it.
        """
        candidates = rank(self.members.live(), drive, cid)
        stored, full = 0, []
        while candidates and stored < self.replication:
            batch, candidates = (
                candidates[: self.replication - stored],
                candidates[self.replication - stored :],
            )
            results = await asyncio.gather(*(self._put_on(m, drive, cid, data, ttl) for m in batch))
            stored += sum(ok for ok, _ in results)
            full += [why for ok, why in results if not ok and why]
        if stored == 0:
            if full:
                raise PodFull(full[0])
            raise MediadriveError(f"no member of the region could store chunk {cid}")
        if stored < self.replication:
            self._short_copies(drive, cid, stored)
        return stored

    def _short_copies(self, drive: str, cid: str, stored: int) -> None:
        """Log a chunk held fewer than R times; at most once a minute, with a count."""
        self._short += 1
        now = time.monotonic()
        if now - self._short_logged < 60:
            return
        log.warning(
            "chunk %s of drive %s is held by %d member(s), fewer than the %d wanted "
            "(%d such chunk(s) since the last report)",
            cid,
            drive,
            stored,
            self.replication,
            self._short,
            extra={"drive": drive, "chunk": cid, "copies": stored, "short": self._short},
        )
        self._short, self._short_logged = 0, now

    # -- copies on read ------------------------------------------------------------------

    def adopt_later(
        self, drive: str, cid: str, member: str, answer: aiohttp.ClientResponse
    ) -> None:
        """A held chunk read from another member while this pod is one of its owners
        (it joined after the chunk was placed): copy it here in the background."""
        if self.draining or self.members.self_url not in self.members.owners(
            drive, cid, self.replication
        ):
            return
        if (drive, cid) in self._adopting:
            return
        expires_text = answer.headers.get(EXPIRES)
        expires = float(expires_text) if expires_text else None
        task = asyncio.ensure_future(self._adopt(drive, cid, member, expires))
        self._adopting[(drive, cid)] = task
        task.add_done_callback(lambda _: self._adopting.pop((drive, cid), None))

    async def _adopt(self, drive: str, cid: str, member: str, expires: float | None) -> None:
        ttl = None if expires is None else expires - time.time()
        if ttl is not None and ttl <= 0:
            return
        answer = await self.members.call("GET", member, f"/v1/drives/{drive}/chunks/{cid}")
        if answer is None or answer.status != 200:
            return
        if await asyncio.to_thread(hash_chunk, answer.body) != cid:
            log.error("member %s sent a corrupt copy of chunk %s", member, cid)
            return
        try:
            await self.store.put(drive, cid, answer.body, held=True, ttl=ttl)
        except PodFull as exc:
            log.info("not taking chunk %s from %s: %s", cid, member, exc)

    async def stop_adopting(self) -> None:
        tasks = list(self._adopting.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- reads that fall back ---------------------------------------------------------

    def read_order(self, drive: str, cid: str) -> list[str]:
        """Other members to ask for a chunk: its owners first, then everyone else."""
        others = self.members.live_others()
        return rank(others, drive, cid)

    async def from_upstream(self, drive: str, cid: str) -> bytes | None:
        """The chunk from the upstream store, verified and cached here. Readers of one chunk
        share one fetch, which ends only once the copy is stored: a reader arriving between
        the two would otherwise fetch it again."""
        if self.upstream is None:
            return None
        key = (drive, cid)
        fetch = self._fetches.get(key)
        if fetch is None:
            fetch = asyncio.ensure_future(self._fetch_and_cache(drive, cid))
            self._fetches[key] = fetch
            fetch.add_done_callback(lambda _: self._fetches.pop(key, None))
        return await asyncio.shield(fetch)

    async def _fetch_and_cache(self, drive: str, cid: str) -> bytes | None:
        data = await self._fetch(cid)
        if data is not None:
            try:
                await self.store.put(drive, cid, data, held=False)
            except PodFull as exc:
                log.info("not caching chunk %s: %s", cid, exc)
        return data

    async def _fetch(self, cid: str) -> bytes | None:
        assert self.upstream is not None
        try:
            data = await self.upstream.get(cid)
        except NotFound:
            return None
        except MediadriveError as exc:
            log.warning("upstream %s failed for chunk %s: %s", self.upstream.url, cid, exc)
            return None
        if await asyncio.to_thread(hash_chunk, data) != cid:
            log.error("upstream %s has a corrupt copy of chunk %s", self.upstream.url, cid)
            return None
        self.metrics.upstream_transfers.inc()
        self.metrics.upstream_bytes.inc(len(data))
        return data

    # -- draining ---------------------------------------------------------------------

    async def _copy_to(self, entry: Entry, targets: list[str]) -> int:
        """Give a held chunk of this pod to the ``targets`` that do not hold it yet."""
        ttl = None if entry.expires is None else entry.expires - time.time()
        if ttl is not None and ttl <= 0:
            return 0
        data: bytes | None = None
        copies = 0
        for target in targets:
            head = await self.members.call(
                "HEAD", target, f"/v1/drives/{entry.drive}/chunks/{entry.id}"
            )
            if head is not None and head.status == 200 and head.headers.get(HOLDING) == "held":
                continue
            if data is None:
                try:
                    data = await asyncio.to_thread(
                        self.store.path(entry.drive, entry.id).read_bytes
                    )
                except FileNotFoundError:  # deleted or expired meanwhile
                    return copies
            ok, _ = await self._put_on(target, entry.drive, entry.id, data, ttl)
            copies += ok
        return copies

    async def drain(self) -> None:
        """Leave the region and hand every held chunk to its owners among the rest."""
        self.draining = True
        self.members.draining = True
        log.info("draining: leaving the region and handing over held chunks")
        await self.stop_adopting()
        await self.members.probe()
        await self.members.leave()
        moved = kept = 0
        for entry in await self.store.held_chunks():
            owners = rank(self.members.live_others(), entry.drive, entry.id)[: self.replication]
            if not owners:
                kept += 1
                continue
            moved += await self._copy_to(entry, owners)
        if kept:
            log.error("draining: no member left to take %d held chunk(s); they stay here", kept)
        log.info("drained: %d copies handed over", moved, extra={"handed_over": moved})

    async def repair(self) -> None:
        """After a member is lost: copy each held chunk here to its owners among the
        live members that lack it, so it is held R times again."""
        copies = 0
        for entry in await self.store.held_chunks():
            if self.draining:
                return
            owners = self.members.owners(entry.drive, entry.id, self.replication)
            copies += await self._copy_to(entry, [o for o in owners if o != self.members.self_url])
        if copies:
            log.info("repair: %d held copies made", copies, extra={"copies": copies})


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]


POD = web.AppKey("pod", Pod)


def _pod(request: web.Request) -> Pod:
    return request.app[POD]


def _forwarded(request: web.Request) -> bool:
    return bool(request.get("peer")) and request.headers.get(FORWARDED) == "1"


def _drive(request: web.Request) -> str:
    drive = request.match_info["drive"]
    if not DRIVE_NAME.match(drive):
        raise web.HTTPBadRequest(text=f"{drive!r} is not a drive name")
    return drive


def _chunk(request: web.Request) -> tuple[str, str]:
    cid = request.match_info["id"]
    if not is_chunk_id(cid):
        raise web.HTTPBadRequest(text=f"{cid!r} is not a chunk id (64 lowercase hex digits)")
    return _drive(request), cid


# -- middlewares ----------------------------------------------------------------------


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


_OPEN = ("/healthz", "/readyz", "/metrics")


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in _OPEN:
        return await handler(request)
    pod = _pod(request)
    if pod.tokens is None:
        if not _is_loopback(request.remote):
            return error(
                403, "this storage pod has no token file and answers loopback clients only"
            )
        request["peer"] = True
        return await handler(request)
    token = bearer(request.headers.get("Authorization"))
    drives = pod.tokens.drives(token) if token else None
    if drives is None:
        return error(401, "a valid bearer token is needed (Authorization: Bearer TOKEN)")
    drive = request.match_info.get("drive")
    members_route = request.path.startswith("/v1/members/")
    if (drive is not None or members_route) and not allows(drives, drive):
        what = f"drive {drive}" if drive else "membership changes"
        return error(403, f"the token is not valid for {what}")
    request["peer"] = ANY_DRIVE in drives
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    pod = _pod(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        if exc.status >= 400:
            return error(exc.status, exc.text or exc.reason)
        raise
    except PodFull as exc:
        status = 507
        return error(507, str(exc))
    except MediadriveError as exc:
        status = 503
        return error(503, str(exc))
    except Exception:
        log.exception("request %s %s failed", request.method, request.path)
        return error(500, "internal error; see the storage pod's log")
    finally:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        pod.metrics.latency.labels(request.method, name, str(status)).observe(
            time.perf_counter() - started
        )


# -- health, stats, membership ----------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    if _pod(request).draining:
        return error(503, "draining")
    return web.json_response({"ok": True})


async def metrics(request: web.Request) -> web.Response:
    pod = _pod(request)
    body = pod.metrics.render(
        lambda: pod.store.bytes_held, lambda: pod.store.bytes_cached, pod.store.capacity
    )
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def stats(request: web.Request) -> web.Response:
    pod = _pod(request)
    return web.json_response(
        {
            "region": pod.settings.region,
            "url": pod.members.self_url,
            "members": pod.members.describe(),
            "bytes_held": pod.store.bytes_held,
            "bytes_cached": pod.store.bytes_cached,
            "capacity": pod.store.capacity,
            "replication": pod.replication,
            "draining": pod.draining,
        }
    )


async def _member_url(request: web.Request) -> str:
    from .settings import member_url

    try:
        body = await request.json()
        return member_url(str(body["url"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise web.HTTPBadRequest(text=f"send {{'url': 'http://HOST:PORT'}} ({exc})") from None


async def join(request: web.Request) -> web.Response:
    pod = _pod(request)
    url = await _member_url(request)
    if url not in pod.members.others():
        log.info("member %s joined", url, extra={"member": url})
    pod.members.add(url)
    members = [m["url"] for m in pod.members.describe() if m["alive"]]
    return web.json_response({"members": members})


async def leave(request: web.Request) -> web.Response:
    pod = _pod(request)
    url = await _member_url(request)
    log.info("member %s left", url, extra={"member": url})
    pod.members.remove(url)
    return web.json_response({"members": [m["url"] for m in pod.members.describe()]})


# -- drives -------------------------------------------------------------------------------


async def drive_status(request: web.Request) -> web.Response:
    pod, drive = _pod(request), _drive(request)
    if pod.store.drive_exists(drive):
        return web.json_response({"drive": drive})
    if not _forwarded(request):
        for member in pod.members.live_others():
            answer = await pod.members.call("GET", member, f"/v1/drives/{drive}")
            if answer is not None and answer.status == 200:
                return web.json_response({"drive": drive})
    return error(404, f"drive {drive} does not exist on this region's storage pods")


async def drive_create(request: web.Request) -> web.Response:
    pod, drive = _pod(request), _drive(request)
    await pod.store.create_drive(drive)
    if not _forwarded(request):
        await asyncio.gather(
            *(pod.members.call("PUT", m, f"/v1/drives/{drive}") for m in pod.members.live_others())
        )
    return web.json_response({"drive": drive}, status=201)


# -- chunks -------------------------------------------------------------------------------


def _ttl(request: web.Request) -> float | None:
    text = request.query.get("ttl")
    if text is None or text == "":
        return None
    try:
        ttl = float(text)
    except ValueError:
        ttl = -1.0
    if not ttl > 0:
        raise web.HTTPBadRequest(text=f"ttl={text!r} is not a positive number of seconds")
    return ttl


async def put_chunk(request: web.Request) -> web.Response:
    pod = _pod(request)
    drive, cid = _chunk(request)
    hold = request.query.get("hold", "1")
    if hold not in ("0", "1"):
        raise web.HTTPBadRequest(text=f"hold={hold!r} must be 0 or 1")
    ttl = _ttl(request)
    data = await request.read()
    actual = await asyncio.to_thread(hash_chunk, data)
    if actual != cid:
        return error(400, f"the bytes sent hash to {actual}, not {cid}: nothing was stored")
    if hold == "0":
        await pod.store.put(drive, cid, data, held=False)
        return web.json_response({"copies": 1}, status=201)
    if _forwarded(request):
        await pod.store.put(drive, cid, data, held=True, ttl=ttl)
        return web.json_response({"copies": 1}, status=201)
    copies = await pod.put_held(drive, cid, data, ttl)
    return web.json_response({"copies": copies}, status=201)


def _bytes_response(request: web.Request, data: bytes) -> web.Response:
    """``data`` as a 200, or the part a Range header asks for as 206/416."""
    try:
        part = request.http_range
    except ValueError:
        return error(416, "the Range header is not one byte range")
    if part.start is None and part.stop is None:
        return web.Response(body=data, headers={HOLDING: "cached"})
    start, stop, _ = part.indices(len(data))
    if start >= len(data) or start >= stop:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
    return web.Response(
        status=206,
        body=data[start:stop],
        headers={"Content-Range": f"bytes {start}-{stop - 1}/{len(data)}", HOLDING: "cached"},
    )


def _holding_headers(entry: Entry) -> dict[str, str]:
    headers: dict[str, str] = {HOLDING: entry.holding}
    if entry.held and entry.expires is not None:
        headers[EXPIRES] = repr(entry.expires)
    return headers


async def _local(pod: Pod, drive: str, cid: str) -> web.FileResponse | None:
    entry = await pod.store.lookup(drive, cid)
    path = pod.store.path(drive, cid)
    if entry is None or not path.exists():
        return None
    await pod.store.touch(drive, cid)
    return web.FileResponse(path, headers=_holding_headers(entry))


_RELAYED = ("Content-Range", HOLDING, EXPIRES, "Content-Type")


async def _from_member(
    request: web.Request, pod: Pod, member: str, path: str
) -> web.StreamResponse | None:
    """The chunk (or the range asked for) streamed from another member, if it has it."""
    headers = {"Range": request.headers["Range"]} if "Range" in request.headers else {}
    async with pod.members.stream(member, path, headers) as answer:
        if answer is None or answer.status not in (200, 206, 416):
            return None
        pod.metrics.peer_transfers.inc()
        if answer.headers.get(HOLDING) == "held":
            pod.adopt_later(request.match_info["drive"], request.match_info["id"], member, answer)
        response = web.StreamResponse(
            status=answer.status,
            headers={k: answer.headers[k] for k in _RELAYED if k in answer.headers},
        )
        if answer.content_length is not None:
            response.content_length = answer.content_length
        await response.prepare(request)
        try:
            async for block in answer.content.iter_chunked(1 << 20):
                await response.write(block)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Too late for an error status: cut the connection, so the client sees a
            # short body (and tries another member) rather than a complete-looking one.
            log.warning("member %s stopped sending %s: %s", member, path, exc)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response


async def get_chunk(request: web.Request) -> web.StreamResponse:
    pod = _pod(request)
    drive, cid = _chunk(request)
    local = await _local(pod, drive, cid)
    if local is not None:
        pod.metrics.hits.inc()
        return local
    pod.metrics.misses.inc()
    if _forwarded(request):
        return error(404, f"chunk {cid} is not on this member")
    for member in pod.read_order(drive, cid):
        relayed = await _from_member(request, pod, member, f"/v1/drives/{drive}/chunks/{cid}")
        if relayed is not None:
            return relayed
    data = await pod.from_upstream(drive, cid)
    if data is None:
        return error(404, f"chunk {cid} of drive {drive} is in no member of the region")
    local = await _local(pod, drive, cid)
    return local if local is not None else _bytes_response(request, data)


async def head_chunk(request: web.Request) -> web.StreamResponse:
    pod = _pod(request)
    drive, cid = _chunk(request)
    entry = await pod.store.lookup(drive, cid)
    if entry is not None:
        return web.Response(headers={"Content-Length": str(entry.size), **_holding_headers(entry)})
    if not _forwarded(request):
        for member in pod.read_order(drive, cid):
            answer = await pod.members.call("HEAD", member, f"/v1/drives/{drive}/chunks/{cid}")
            if answer is not None and answer.status == 200:
                headers = {
                    k: answer.headers[k] for k in ("Content-Length", HOLDING) if k in answer.headers
                }
                return web.Response(headers=headers)
    return web.Response(status=404)


async def delete_chunk(request: web.Request) -> web.Response:
    pod = _pod(request)
    drive, cid = _chunk(request)
    await pod.store.delete(drive, cid)
    if not _forwarded(request):
        path = f"/v1/drives/{drive}/chunks/{cid}"
        await asyncio.gather(
            *(pod.members.call("DELETE", m, path) for m in pod.members.live_others())
        )
    return web.Response(status=204)


async def list_chunks(request: web.Request) -> web.Response:
    pod, drive = _pod(request), _drive(request)
    prefix = request.query.get("prefix", "")
    after = request.query.get("after", "")
    try:
        limit = max(1, min(LIST_LIMIT, int(request.query.get("limit", str(LIST_LIMIT)))))
    except ValueError:
        raise web.HTTPBadRequest(text="limit must be a number") from None
    ids = set(await pod.store.list(drive, prefix, after, limit))
    if not _forwarded(request):
        params = {"prefix": prefix, "after": after, "limit": str(limit)}
        answers = await asyncio.gather(
            *(
                pod.members.call("GET", m, f"/v1/drives/{drive}/chunks", params=params)
                for m in pod.members.live_others()
            )
        )
        for answer in answers:
            if answer is not None and answer.status == 200:
                ids.update(answer.json()["ids"])
    # Each member sent its first `limit` ids after `after`: the first `limit` of
    # their union are the region's.
    return web.json_response({"ids": sorted(ids)[:limit], "limit": limit})


async def _ids(request: web.Request) -> list[str]:
    try:
        body = await request.json()
        ids = [str(i) for i in body["ids"]]
    except (ValueError, KeyError, TypeError):
        raise web.HTTPBadRequest(text='send {"ids": [CHUNK_ID, ...]}') from None
    bad = [i for i in ids if not is_chunk_id(i)]
    if bad:
        raise web.HTTPBadRequest(text=f"{bad[0]!r} is not a chunk id")
    return ids


async def holding(request: web.Request) -> web.Response:
    pod, drive = _pod(request), _drive(request)
    ids = await _ids(request)
    found = await pod.store.holding(drive, ids)
    missing = [i for i in ids if found.get(i) != "held"]
    if missing and not _forwarded(request):
        answers = await asyncio.gather(
            *(
                pod.members.call(
                    "POST", m, f"/v1/drives/{drive}/chunks/holding", json={"ids": missing}
                )
                for m in pod.members.live_others()
            )
        )
        for answer in answers:
            if answer is None or answer.status != 200:
                continue
            body: dict[str, list[str]] = answer.json()
            for cid in body.get("cached", []):
                found.setdefault(cid, "cached")
            for cid in body.get("held", []):
                found[cid] = "held"
    return web.json_response(
        {
            "held": sorted(i for i, h in found.items() if h == "held"),
            "cached": sorted(i for i, h in found.items() if h == "cached"),
        }
    )


async def release(request: web.Request) -> web.Response:
    pod, drive = _pod(request), _drive(request)
    ids = await _ids(request)
    await pod.store.release(drive, ids)
    if not _forwarded(request):
        await asyncio.gather(
            *(
                pod.members.call("POST", m, f"/v1/drives/{drive}/chunks/release", json={"ids": ids})
                for m in pod.members.live_others()
            )
        )
    return web.Response(status=204)


def make_app(pod: Pod) -> web.Application:
    app = web.Application(middlewares=[_errors, _auth], client_max_size=pod.settings.max_chunk)
    app[POD] = pod
    chunks = "/v1/drives/{drive}/chunks"
    routes: list[tuple[str, str, Callable[[web.Request], Awaitable[Any]]]] = [
        ("GET", "/healthz", healthz),
        ("GET", "/readyz", readyz),
        ("GET", "/metrics", metrics),
        ("GET", "/v1/stats", stats),
        ("POST", "/v1/members/join", join),
        ("POST", "/v1/members/leave", leave),
        ("GET", "/v1/drives/{drive}", drive_status),
        ("PUT", "/v1/drives/{drive}", drive_create),
        ("GET", chunks, list_chunks),
        ("POST", f"{chunks}/holding", holding),
        ("POST", f"{chunks}/release", release),
        ("PUT", chunks + "/{id}", put_chunk),
        ("GET", chunks + "/{id}", get_chunk),
        ("HEAD", chunks + "/{id}", head_chunk),
        ("DELETE", chunks + "/{id}", delete_chunk),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    if pod.settings.relay:
        # /v1/drives/{drive}/events: the drive in the path scopes tokens as for chunks.
        relay.setup(app, dict(pod.settings.relay))
    return app
