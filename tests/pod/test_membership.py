"""Placement by rendezvous hashing, and members found through DNS."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from mediadrive.core.hashing import chunk_id
from mediadrive.pod.members import Membership, rank

IDS = [chunk_id(str(i).encode()) for i in range(300)]


def owners(members: list[str], cid: str, replication: int = 2) -> set[str]:
    return set(rank(members, "show", cid)[:replication])


def test_a_new_member_takes_chunks_from_others_and_moves_nothing_else() -> None:
    three = ["http://a:1", "http://b:1", "http://c:1"]
    four = [*three, "http://d:1"]
    moved = 0
    for cid in IDS:
        before, after = owners(three, cid), owners(four, cid)
        if before != after:
            moved += 1
            # Only the newcomer came in, and only one copy moved to it.
            assert after - before == {"http://d:1"} and len(before - after) == 1
    # About half the chunks have the newcomer among their two owners of four.
    assert 0.3 * len(IDS) < moved < 0.7 * len(IDS)


def test_placement_spreads_and_ignores_the_order_members_are_listed_in() -> None:
    members = ["http://a:1", "http://b:1", "http://c:1"]
    counts = dict.fromkeys(members, 0)
    for cid in IDS:
        first = rank(members, "show", cid)[0]
        assert rank(list(reversed(members)), "show", cid)[0] == first
        counts[first] += 1
    assert all(n > len(IDS) / 6 for n in counts.values())
    # The same id in another drive is placed independently.
    assert any(rank(members, "show", c) != rank(members, "other", c) for c in IDS[:20])


def test_a_dead_or_draining_member_owns_nothing() -> None:
    view = Membership("http://a:1", peers=["http://a:1", "http://b:1", "http://c:1"])
    assert view.others() == {"http://b:1", "http://c:1"}
    view.alive["http://b:1"] = False
    view.draining = True
    assert all(view.owners("show", cid, 2) == ["http://c:1"] for cid in IDS[:20])


async def test_members_from_dns_are_every_a_record_on_the_pod_port() -> None:
    view = Membership("http://127.0.0.2:8600", peers_dns="localhost", port=8600)
    await view._resolve()
    assert view.others() == {"http://127.0.0.1:8600"}
    # A pod resolving its own address leaves itself out.
    itself = Membership("http://127.0.0.1:8600", peers_dns="localhost", port=8600)
    await itself._resolve()
    assert itself.others() == set()


@contextlib.asynccontextmanager
async def peer(routes: dict[str, Callable[[Any], Awaitable[Any]]]) -> AsyncIterator[str]:
    """A member on loopback answering ``routes`` (POST path -> JSON body -> answer)."""

    def route(handle: Callable[[Any], Awaitable[Any]]) -> Callable[..., Any]:
        async def answer(request: web.Request) -> web.Response:
            return web.json_response(await handle(await request.json()))

        return answer

    app = web.Application()
    for path, handle in routes.items():
        app.router.add_post(path, route(handle))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_leaving_tells_members_the_last_probe_thought_dead() -> None:
    heard: list[str] = []

    async def leave(body: Any) -> Any:
        heard.append(body["url"])
        return {}

    async with peer({"/v1/members/leave": leave}) as slow:
        view = Membership("http://127.0.0.1:1", peers=[slow], timeout=2.0)
        view.alive[slow] = False
        await view.leave()
        await view.close()
    assert heard == ["http://127.0.0.1:1"]


async def test_a_member_that_left_is_not_learnt_back_from_an_older_list() -> None:
    gone = "http://127.0.0.1:2"

    async def join(body: Any) -> Any:
        # This member has not heard of the leave yet.
        return {"members": [body["url"], gone]}

    async with peer({"/v1/members/join": join}) as other:
        view = Membership("http://127.0.0.1:1", peers=[other, gone], timeout=2.0)
        view.remove(gone)
        await view.join(other)
        assert view.others() == {other}
        # Its own join brings it back.
        view.add(gone)
        assert view.others() == {other, gone}
        await view.close()
