"""Bearer tokens scoped to drives: refusals change nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mediadrive.core.blob import open_store
from mediadrive.core.blob.pod import PodBlobStore
from mediadrive.core.errors import StoreUnavailable
from tests.pod.conftest import Pods
from tests.pod.support import chunk_url, files_on_disk, http, index_rows, local_holding, payload
from tests.servers import PodServer

SHOW = "show-token"
OTHER = "other-token"
PEER = "peer-token"


def token_files(tmp_path: Path) -> dict[str, Path]:
    pod_tokens = tmp_path / "tokens"
    pod_tokens.write_text(f"# drive tokens\n{SHOW} show\n{OTHER} other,spare\n\n{PEER} *\n")
    files = {"pod": pod_tokens}
    for name, token in (("show", SHOW), ("other", OTHER), ("wrong", "not-a-token")):
        path = tmp_path / f"{name}.token"
        path.write_text(token + "\n")
        files[name] = path
    return files


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_untouched(pod: PodServer, drive: str, cid: str) -> None:
    assert files_on_disk(pod.data_dir, drive) == []
    assert (drive, cid) not in index_rows(pod.data_dir)
    assert http("HEAD", chunk_url(pod, drive, cid), headers=bearer(PEER))[0] == 404


async def test_requests_without_a_valid_token_for_the_drive_change_nothing(
    pods: Pods, tmp_path: Path
) -> None:
    files = token_files(tmp_path)
    pod = pods.start("--token-file", str(files["pod"]))
    cid, data = payload(40_000, 1)
    url = chunk_url(pod, "show", cid) + "?hold=1"

    assert http("PUT", url, data)[0] == 401
    assert http("PUT", url, data, bearer("not-a-token"))[0] == 401
    assert http("PUT", url, data, {"Authorization": f"Basic {SHOW}"})[0] == 401
    status, _, body = http("PUT", url, data, bearer(OTHER))
    assert status == 403 and b"show" in body
    assert_untouched(pod, "show", cid)

    # The client says which URL and why, and nothing lands either.
    for name in ("wrong", "other"):
        store = open_store(pod.store_url("show", files[name]))
        try:
            with pytest.raises(StoreUnavailable, match="refused access to drive show") as refused:
                await store.put(cid, data)
            assert "\n" not in str(refused.value)
        finally:
            await store.close()
    assert_untouched(pod, "show", cid)

    # The drive's own token works, for that drive only.
    store = open_store(pod.store_url("show", files["show"]), create=True)
    assert isinstance(store, PodBlobStore)
    try:
        await store.check()
        await store.put(cid, data)
        assert await store.get(cid) == data
        assert await store.holding([cid]) == {cid: "held"}
    finally:
        await store.close()
    assert files_on_disk(pod.data_dir, "show") == [cid]
    status, _, _ = http("DELETE", chunk_url(pod, "show", cid), headers=bearer(OTHER))
    assert status == 403
    assert http("GET", chunk_url(pod, "show", cid), headers=bearer(OTHER))[0] == 403
    assert files_on_disk(pod.data_dir, "show") == [cid]
    # Membership changes need a token for every drive.
    join = f"{pod.url}/v1/members/join"
    assert http("POST", join, b'{"url": "http://127.0.0.1:1"}', bearer(SHOW))[0] == 403
    # Health and metrics stay open for probes.
    assert http("GET", f"{pod.url}/healthz")[0] == 200
    assert http("GET", f"{pod.url}/metrics")[0] == 200


async def test_without_a_token_file_the_pod_says_it_answers_loopback_only(pods: Pods) -> None:
    pod = pods.start()
    assert "loopback clients only" in pod.log_text()
    cid, data = payload(1000, 2)
    assert http("PUT", chunk_url(pod, "show", cid), data)[0] == 201


def _outside_address() -> str | None:
    """An address of this machine other than loopback, if it has one."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def test_without_a_token_file_other_clients_are_refused(pods: Pods) -> None:
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    port = pods.ports(1)[0]
    pod = pods.start("--listen", f"0.0.0.0:{port}", port=port)
    cid, data = payload(1000, 3)
    status, _, body = http("PUT", f"http://{address}:{port}/v1/drives/show/chunks/{cid}", data)
    assert status == 403 and b"loopback" in body
    assert files_on_disk(pod.data_dir, "show") == []


def alive_members(pod: PodServer) -> set[str]:
    _, _, body = http("GET", f"{pod.url}/v1/stats", headers=bearer(PEER))
    return {m["url"] for m in json.loads(body)["members"] if m["alive"]}


async def test_only_pods_may_mark_a_request_forwarded(pods: Pods, tmp_path: Path) -> None:
    files = token_files(tmp_path)
    ports = pods.ports(2)
    peers = ",".join(f"http://127.0.0.1:{p}" for p in ports)
    flags = ("--token-file", str(files["pod"]), "--peers", peers, "--probe-interval", "300ms")
    first, second = (pods.start(*flags, port=port) for port in ports)
    # The first may have probed the second before it was up: wait until it sees it.
    deadline = time.monotonic() + 10
    while second.url not in alive_members(first):
        assert time.monotonic() < deadline, alive_members(first)
        time.sleep(0.1)
    cid, data = payload(20_000, 4)
    # A drive's client claiming to be a pod is still replicated like any client.
    headers = {**bearer(SHOW), "X-Mediadrive-Forwarded": "1"}
    status, _, body = http("PUT", chunk_url(first, "show", cid) + "?hold=1", data, headers)
    assert status == 201, body
    assert [local_holding(p, "show", cid, PEER) for p in (first, second)] == ["held", "held"]


async def test_sighup_reads_the_token_file_again(pods: Pods, tmp_path: Path) -> None:
    import signal
    import time

    files = token_files(tmp_path)
    pod = pods.start("--token-file", str(files["pod"]))
    cid, data = payload(2_000, 5)
    url = chunk_url(pod, "show", cid) + "?hold=1"
    assert http("PUT", url, data, bearer("rotated-token"))[0] == 401
    files["pod"].write_text(f"rotated-token show\n{PEER} *\n")
    pod.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while http("PUT", url, data, bearer("rotated-token"))[0] != 201:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert http("GET", chunk_url(pod, "show", cid), headers=bearer(SHOW))[0] == 401
