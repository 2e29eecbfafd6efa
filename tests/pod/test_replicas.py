"""Three pods, two copies of every held chunk: losing, draining and adding members."""

from __future__ import annotations

import json
import signal
import socket
import time

from mediadrive.core.blob import open_store
from mediadrive.pod.members import rank
from tests.pod.conftest import Pods
from tests.pod.support import http, local_holding, payload
from tests.servers import PodServer

DRIVE = "show"


def region(pods: Pods, n: int = 3) -> list[PodServer]:
    ports = pods.ports(n)
    peers = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    flags = ("--peers", peers, "--replication", "2", "--probe-interval", "300ms")
    members = [pods.start(*flags, port=port) for port in ports]
    # A pod that probed a peer before it listened counts it down until the next probe,
    # and would place chunks without it: start once every pod sees every pod alive.
    everyone = {m.url for m in members}
    deadline = time.monotonic() + 10
    while any(alive_members(m) != everyone for m in members):
        assert time.monotonic() < deadline, [alive_members(m) for m in members]
        time.sleep(0.1)
    return members


def alive_members(pod: PodServer) -> set[str]:
    _, _, body = http("GET", f"{pod.url}/v1/stats")
    return {m["url"] for m in json.loads(body)["members"] if m["alive"]}


async def put_held(pod: PodServer, count: int, seed: int) -> dict[str, bytes]:
    chunks = dict(payload(30_000 + i, seed + i) for i in range(count))
    store = open_store(pod.store_url(DRIVE), create=True)
    try:
        await store.check()
        for cid, data in chunks.items():
            await store.put(cid, data)
    finally:
        await store.close()
    return chunks


async def read_all(pod: PodServer, chunks: dict[str, bytes]) -> None:
    store = open_store(pod.store_url(DRIVE))
    try:
        for cid, data in chunks.items():
            assert await store.get(cid) == data, f"{cid} through {pod.url}"
            assert await store.get_range(cid, 100, 50) == data[100:150]
            assert await store.exists(cid)
        listed = [cid async for cid in store.list()]
        assert set(chunks) <= set(listed)
    finally:
        await store.close()


def holders(members: list[PodServer], cid: str) -> list[str]:
    return [m.url for m in members if local_holding(m, DRIVE, cid) == "held"]


def members_of(pod: PodServer) -> set[str]:
    _, _, body = http("GET", f"{pod.url}/v1/stats")
    return {m["url"] for m in json.loads(body)["members"]}


async def test_every_held_chunk_is_on_two_members_and_survives_a_kill(pods: Pods) -> None:
    first, second, third = region(pods)
    chunks = await put_held(first, 12, seed=100)
    urls = [first.url, second.url, third.url]
    for cid in chunks:
        # On its two first owners, whichever pod took the put: placement spreads them.
        assert set(holders([first, second, third], cid)) == set(rank(urls, DRIVE, cid)[:2])

    second.proc.send_signal(signal.SIGKILL)
    second.proc.wait(10)
    for survivor in (first, third):
        await read_all(survivor, chunks)
    # The survivors notice and copy what the lost member held: two copies again.
    deadline = time.monotonic() + 20
    while any(len(holders([first, third], cid)) < 2 for cid in chunks):
        assert time.monotonic() < deadline, "held chunks were not copied again"
        time.sleep(0.2)
    # Held puts go on with one member gone: still two copies each.
    more = await put_held(third, 4, seed=200)
    for cid in more:
        assert len(holders([first, third], cid)) == 2


async def test_a_draining_member_hands_its_held_chunks_over(pods: Pods) -> None:
    members = region(pods)
    chunks = await put_held(members[0], 12, seed=300)
    leaving, rest = members[1], [members[0], members[2]]
    assert any(local_holding(leaving, DRIVE, cid) == "held" for cid in chunks)

    leaving.proc.send_signal(signal.SIGTERM)
    assert leaving.proc.wait(30) == 0
    for cid in chunks:
        assert sorted(holders(rest, cid)) == sorted(m.url for m in rest)
    for pod in rest:
        assert leaving.url not in members_of(pod)
        await read_all(pod, chunks)


async def test_a_new_member_finds_every_chunk(pods: Pods) -> None:
    members = region(pods)
    chunks = await put_held(members[0], 12, seed=400)
    # The newcomer knows one member only; joining tells it (and them) of the rest.
    newcomer = pods.start(
        "--peers", members[1].url, "--replication", "2", "--probe-interval", "300ms"
    )
    everyone = [*members, newcomer]
    # It announces itself once it listens: soon every member knows every other.
    deadline = time.monotonic() + 15
    while any(members_of(pod) != {m.url for m in everyone} for pod in everyone):
        assert time.monotonic() < deadline, [members_of(pod) for pod in everyone]
        time.sleep(0.1)
    for pod in everyone:
        await read_all(pod, chunks)
    # Reads through the newcomer copied it the chunks it now owns.
    theirs = [c for c in chunks if newcomer.url in rank([m.url for m in everyone], DRIVE, c)[:2]]
    assert theirs
    deadline = time.monotonic() + 15
    while any(local_holding(newcomer, DRIVE, cid) != "held" for cid in theirs):
        assert time.monotonic() < deadline, "the newcomer did not take its share"
        time.sleep(0.1)
    # New held chunks are placed over all four.
    more = await put_held(newcomer, 16, seed=500)
    for cid in more:
        assert len(holders(everyone, cid)) == 2
    assert any(local_holding(newcomer, DRIVE, cid) == "held" for cid in more)


def test_a_draining_pod_answers_not_ready_then_exits_0(pods: Pods) -> None:
    # A member that takes connections and never answers keeps the drain going a while.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        pod = pods.start("--peers", silent_url, "--probe-interval", "1s")
        assert http("GET", f"{pod.url}/readyz")[0] == 200
        pod.proc.send_signal(signal.SIGTERM)
        seen = set()
        while pod.proc.poll() is None:
            try:
                seen.add(http("GET", f"{pod.url}/readyz")[0])
            except OSError:
                break
            time.sleep(0.05)
        assert 503 in seen
        assert pod.proc.wait(30) == 0
    assert "drained" in pod.log_text()
