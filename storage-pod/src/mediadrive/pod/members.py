"""The pods of a region: who they are, which answer, and who owns which chunk.

Membership comes from ``--peers`` (base URLs) or ``--peers-dns`` (each A record
is a member on this pod's port), grows when a pod announces itself
(``POST /v1/members/join``) and shrinks when one leaves
(``/v1/members/leave``); a member that left is not learnt back from the lists other
members answer a join with, only from its own join. Members are probed
(``GET /healthz``); a dead one is skipped until it answers again. A chunk's owners
are the live members with the highest ``blake3(member, drive, id)`` (rendezvous
hashing), so a change of membership moves only the chunks of the members that came
or went.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from blake3 import blake3

FORWARDED = "X-Mediadrive-Forwarded"
HOLDING = "X-Mediadrive-Holding"
# When a held chunk's TTL ends (seconds since the epoch); absent without a TTL.
EXPIRES = "X-Mediadrive-Expires"
# A member that sends nothing for this long is taken for dead.
PEER_READ_TIMEOUT = 60.0

log = logging.getLogger("mediadrive.pod.members")


def weight(member: str, drive: str, chunk_id: str) -> bytes:
    return bytes(blake3(f"{member}\n{drive}/{chunk_id}".encode()).digest())


def rank(members: Iterable[str], drive: str, chunk_id: str) -> list[str]:
    """``members`` from the chunk's first owner to its last."""
    return sorted(set(members), key=lambda m: weight(m, drive, chunk_id), reverse=True)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body or b"null")


class Membership:
    """This pod's view of its region; ``self_url`` is how peers know it."""

    def __init__(
        self,
        self_url: str,
        *,
        peers: Iterable[str] = (),
        peers_dns: str | None = None,
        port: int = 0,
        token: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.self_url = self_url
        self.static = {p for p in peers if p != self_url}
        self.joined: set[str] = set()
        self.dns_members: set[str] = set()
        self.peers_dns = peers_dns
        self.port = port
        self.alive: dict[str, bool] = {}
        self.announced: set[str] = set()
        # Members that said they left: not learnt again from others' lists (which may
        # predate the leave), only from the member itself joining again.
        self.departed: set[str] = set()
        self.draining = False
        # Set when a member is lost (dead or gone): held chunks may need new copies.
        self.lost = asyncio.Event()
        self.token = token
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    # -- who --------------------------------------------------------------------------

    def others(self) -> set[str]:
        return (self.static | self.joined | self.dns_members) - {self.self_url}

    def live_others(self) -> list[str]:
        return sorted(m for m in self.others() if self.alive.get(m, True))

    def live(self) -> list[str]:
        """Members that may own chunks: the live others, and this pod unless draining."""
        members = self.live_others()
        return members if self.draining else [self.self_url, *members]

    def owners(self, drive: str, chunk_id: str, replication: int) -> list[str]:
        return rank(self.live(), drive, chunk_id)[:replication]

    def add(self, url: str) -> None:
        if url != self.self_url:
            self.joined.add(url)
            self.alive[url] = True
            self.departed.discard(url)

    def _lose(self, member: str) -> None:
        if self.alive.get(member, True):
            self.lost.set()
        self.alive[member] = False

    def remove(self, url: str) -> None:
        if url in self.others():
            self.lost.set()
        self.joined.discard(url)
        self.static.discard(url)
        self.dns_members.discard(url)
        self.alive.pop(url, None)
        self.announced.discard(url)
        self.departed.add(url)

    def describe(self) -> list[dict[str, Any]]:
        members = [{"url": self.self_url, "alive": True, "self": True, "draining": self.draining}]
        members += [
            {"url": m, "alive": self.alive.get(m, True), "self": False}
            for m in sorted(self.others())
        ]
        return members

    # -- talking to peers -------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._timeout, sock_read=PEER_READ_TIMEOUT
                ),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self,
        method: str,
        member: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        json: Any = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-request limit for aiohttp
    ) -> Answer | None:
        """One request to a peer, marked forwarded; None if it cannot be reached."""
        sent = {FORWARDED: "1", **(headers or {})}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        try:
            async with self.session().request(
                method,
                member + path,
                params=params,
                headers=sent,
                data=data,
                json=json,
                timeout=aiohttp.ClientTimeout(total=timeout) if timeout else None,
            ) as resp:
                body = await resp.read()
                return Answer(resp.status, dict(resp.headers), body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if self.alive.get(member, True):
                log.warning("member %s does not answer: %s", member, exc or type(exc).__name__)
            self._lose(member)
            return None

    @contextlib.asynccontextmanager
    async def stream(
        self, member: str, path: str, headers: Mapping[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse | None]:
        """A GET to a peer whose body is read by the caller; None if it cannot be reached."""
        sent = {FORWARDED: "1", **headers}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        try:
            resp = await self.session().get(member + path, headers=sent)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if self.alive.get(member, True):
                log.warning("member %s does not answer: %s", member, exc or type(exc).__name__)
            self._lose(member)
            yield None
            return
        try:
            yield resp
        finally:
            resp.release()

    async def probe(self) -> None:
        """Probe every member; announce this pod to those that have not heard of it."""
        await self._resolve()

        async def one(member: str) -> None:
            answer = await self.call("GET", member, "/healthz", timeout=self._timeout)
            was = self.alive.get(member, True)
            now = answer is not None and answer.status == 200
            if now:
                self.alive[member] = True
            else:
                self._lose(member)
            if now and not was:
                log.info("member %s answers again", member)
            if now and member not in self.announced and not self.draining:
                await self.join(member)

        await asyncio.gather(*(one(m) for m in self.others()))

    async def join(self, member: str) -> None:
        answer = await self.call(
            "POST", member, "/v1/members/join", json={"url": self.self_url}, timeout=self._timeout
        )
        if answer is None or answer.status != 200:
            return
        self.announced.add(member)
        for url in answer.json().get("members", []):
            if url != self.self_url and url not in self.others() and url not in self.departed:
                self.add(url)

    async def announce(self) -> None:
        """Join every member known now, and the members they know of."""
        for _ in range(3):
            targets = self.others() - self.announced
            if not targets:
                return
            await asyncio.gather(*(self.join(m) for m in targets))

    async def leave(self) -> None:
        # Every known member, not only those that answered the last probe: one that
        # was slow to answer then would otherwise keep listing this pod as a member.
        await asyncio.gather(
            *(
                self.call(
                    "POST",
                    m,
                    "/v1/members/leave",
                    json={"url": self.self_url},
                    timeout=self._timeout,
                )
                for m in sorted(self.others())
            )
        )

    async def _resolve(self) -> None:
        if not self.peers_dns:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                self.peers_dns, self.port, family=socket.AF_INET, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            log.warning("cannot resolve --peers-dns %s: %s", self.peers_dns, exc)
            return
        found = {f"http://{info[4][0]}:{self.port}" for info in infos}
        for gone in self.dns_members - found:
            self.alive.pop(gone, None)
        # A member that left may still be in DNS for a while; it rejoins by itself.
        self.dns_members = found - {self.self_url} - self.departed
