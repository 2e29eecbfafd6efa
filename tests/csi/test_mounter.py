"""The plugin with its agents started by the mounter, as the chart deploys them: two
processes (two containers of one pod), so killing the plugin's whole container
leaves the agents, and the pods' mounts, as they are."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mediadrive.node.client import MountClient
from mediadrive.node.csi.launcher import LaunchError, MounterClient
from mediadrive.node.registry import MountRegistry

from .conftest import (
    MEDIADRIVE,
    DriveFixture,
    MounterProcess,
    PluginProcess,
    free_port,
)
from .test_node import VOLUME, agent_pid, kill_agent, publish, stage, stats, unpublish, unstage

# Reads FILE again and again (opened anew each time) until STOP exists; every read
# must give the bytes whose sha256 is DIGEST. Counts reads in COUNT.
READER = """
import hashlib, os, sys, time
path, digest, count, stop = sys.argv[1:5]
n = 0
while not os.path.exists(stop):
    with open(path, "rb") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    if got != digest:
        sys.exit(f"read {n + 1}: wrong bytes ({got})")
    n += 1
    with open(count + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(count + ".tmp", count)
    time.sleep(0.01)
"""


class Reader:
    def __init__(self, base: Path, path: Path, data: bytes) -> None:
        self.count = base / "reads"
        self.stop_file = base / "stop-reading"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                READER,
                str(path),
                hashlib.sha256(data).hexdigest(),
                str(self.count),
                str(self.stop_file),
            ],
            stderr=subprocess.PIPE,
        )

    def reads(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int(self.count.read_text())
        return 0

    def wait_for_more(self, than: int, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.communicate()[1].decode()
            if self.reads() > than:
                return self.reads()
            time.sleep(0.05)
        raise AssertionError(f"the reader is stuck at {self.reads()} reads")

    def stop(self) -> None:
        self.stop_file.touch()
        _, err = self.proc.communicate(timeout=10)
        assert self.proc.returncode == 0, err.decode()


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def kill_container(plugin: PluginProcess) -> None:
    """What a container runtime does to the plugin's container: SIGKILL to its process
    group and to everything it started."""
    assert plugin.proc is not None
    pid = plugin.proc.pid
    doomed, todo = set(), [pid]
    while todo:
        p = todo.pop()
        doomed.add(p)
        todo += children(p)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for p in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    plugin.proc.wait()


def gone(pid: int, timeout: float = 10) -> bool:
    """The process exited and was reaped (no zombie left)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def with_mounter(base: Path, mounter: MounterProcess) -> Iterator[PluginProcess]:
    plugin = PluginProcess(base)
    try:
        yield plugin
    finally:
        plugin.stop()


def test_plugin_container_killed_mounts_keep_serving(
    base: Path, drive: DriveFixture, mounter: MounterProcess, with_mounter: PluginProcess
) -> None:
    plugin = with_mounter
    port = free_port()
    args = ("--mounter", mounter.endpoint, "--metrics-port", str(port))
    plugin.start(*args, health_interval=3600)
    client = plugin.client()
    staging, target = base / "staging", base / "pods/a/vol"
    staging.mkdir()
    stage(client, drive, staging, awsAccessKeyId="AKIDTEST", awsSecretAccessKey="k3y")
    publish(client, drive, staging, target)
    agent = agent_pid(plugin, staging)
    assert mounter.proc is not None and parent(agent) == mounter.proc.pid
    # The keys reach the agent's environment through the mounter, never its log.
    assert b"AWS_SECRET_ACCESS_KEY=k3y" in Path(f"/proc/{agent}/environ").read_bytes()
    assert b"k3y" not in mounter.log.read_bytes() + plugin.log.read_bytes()

    clip = os.urandom(3 << 20)
    (target / "clip.bin").write_bytes(clip)
    # Committed by its fsync, then written again and still open: pending until the
    # unstage commits it (written in place, the bytes reach the agent at once).
    pending = open(staging / "render.log", "wb")  # noqa: SIM115
    pending.write(b"frame 1001 done\n")
    pending.flush()
    os.fsync(pending.fileno())
    more = os.open(staging / "render.log", os.O_RDWR)
    os.pwrite(more, b"frame 1002 done\n", 16)

    reader = Reader(base, target / "clip.bin", clip)
    try:
        reads = reader.wait_for_more(0)
        kill_container(plugin)
        # The agent is the mounter's child: untouched, and the reads go on.
        assert agent_pid(plugin, staging) == agent and parent(agent) == mounter.proc.pid
        reads = reader.wait_for_more(reads + 20)

        plugin.start(*args, health_interval=3600)
        client = plugin.client()
        reply = stats(client, target)
        assert not reply.volume_condition.abnormal, reply.volume_condition.message
        assert agent_pid(plugin, staging) == agent
        entry = MountRegistry(plugin.state_dir / "run").entry_for(staging)
        assert entry is not None and MountClient(entry).status()["dirty_files"]

        # The commit of clip.bin (on close) shows in the new plugin's commit latency.
        labels = f'volume="{VOLUME}",drive="{drive.name}"'
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as answer:
                text = answer.read().decode()
            found = re.search(rf"mediadrive_csi_commit_seconds_count{{{labels}}} (\d+)", text)
            if found and int(found.group(1)) >= 1:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        assert "# TYPE mediadrive_csi_commit_seconds histogram" in text
        assert f'mediadrive_csi_commit_seconds_bucket{{{labels},le="+Inf"}}' in text
        assert f"mediadrive_csi_commit_seconds_sum{{{labels}}}" in text
        assert "mediadrive_csi_mounter_up 1" in text
        reader.wait_for_more(reader.reads() + 5)
    finally:
        reader.stop()

    unpublish(client, target)
    unstage(client, staging)
    with contextlib.suppress(OSError):
        pending.close()
    with contextlib.suppress(OSError):
        os.close(more)
    assert gone(agent)
    assert drive.read("/render.log")[0] == b"frame 1001 done\nframe 1002 done\n"
    assert drive.read("/clip.bin")[0] == clip


def test_dead_agent_restarted_through_the_mounter(
    base: Path, drive: DriveFixture, mounter: MounterProcess, with_mounter: PluginProcess
) -> None:
    plugin = with_mounter
    plugin.start("--mounter", mounter.endpoint, health_interval=0.5)
    client = plugin.client()
    staging, target = base / "staging", base / "pods/a/vol"
    staging.mkdir()
    stage(client, drive, staging)
    publish(client, drive, staging, target)
    (target / "a.txt").write_text("kept")

    def healed(old: int) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if (target / "a.txt").read_text() == "kept":
                    new = agent_pid(plugin, staging)
                    assert new != old
                    return new
            time.sleep(0.1)
        raise AssertionError(f"the agent was not restarted: {plugin.log.read_text()[-3000:]}")

    # The health loop asks the mounter for a new agent; the mounter reaps the old one.
    first = kill_agent(plugin, staging)
    second = healed(first)
    assert mounter.proc is not None and parent(second) == mounter.proc.pid
    assert gone(first)

    # The mounter's container restarts: its agents die with it. Meanwhile calls that
    # need an agent fail UNAVAILABLE, saying why; the health loop heals it after.
    mounter.proc.kill()
    mounter.proc.wait()
    kill_agent(plugin, staging)
    reply = stats(client, target)
    assert reply.volume_condition.abnormal
    assert "mounter does not answer" in reply.volume_condition.message
    with pytest.raises(grpc.RpcError) as failed:
        publish(client, drive, staging, base / "pods/b/vol")
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "mounter does not answer" in (failed.value.details() or "")
    mounter.start()
    third = healed(second)
    assert parent(third) == mounter.proc.pid
    unpublish(client, target)
    unstage(client, staging)


def test_mounter_refuses_bad_requests(
    base: Path, drive: DriveFixture, mounter: MounterProcess
) -> None:
    api = MounterClient(mounter.socket, timeout=30)
    assert api.health()
    assert oct(mounter.socket.stat().st_mode & 0o777) == "0o600"
    point = base / "m"
    point.mkdir()
    state = mounter.state_dir
    good = {
        "drive": drive.name,
        "meta_url": drive.meta_url,
        "store_url": drive.store_url,
        "mountpoint": str(point),
        "cache_dir": str(state / "cache" / "k1"),
        "run_dir": str(state / "run"),
    }

    def refused(body: dict[str, Any], *expected: str) -> str:
        with pytest.raises(LaunchError) as failed:
            api.call("POST", "/v1/mount", body)
        for text in expected:
            assert text in failed.value.message, failed.value.message
        assert not failed.value.unavailable
        return failed.value.message

    refused({}, '{"options"')
    refused({"options": good, "argv": ["sh"]}, "unknown fields: argv")
    refused({"options": {k: v for k, v in good.items() if k != "drive"}}, "options.drive")
    refused({"options": good | {"mountpoint": "rel/path"}}, "absolute path")
    refused({"options": good | {"run_dir": "/tmp"}}, f"run_dir must be {state / 'run'}")
    refused({"options": good | {"cache_dir": "/root/x"}}, "cache_dir must be a folder")
    refused({"options": good, "env": {"LD_PRELOAD": "/x.so"}}, "LD_PRELOAD not allowed")
    refused({"options": good, "env": {"AWS_X": 1}}, "env: give an object of strings")
    # A mount that fails: the agent's reason, no secret of the request anywhere.
    message = refused(
        {"options": good | {"drive": "nosuch"}, "env": {"AWS_SECRET_ACCESS_KEY": "s3cr3t"}},
        "nosuch",
    )
    assert "s3cr3t" not in message
    with pytest.raises(LaunchError) as failed:
        api.call("GET", "/v1/nothing")
    assert "Not Found" in failed.value.message
    # Not JSON.
    from mediadrive.node.csi import launcher

    conn = launcher._UnixConnection(str(mounter.socket), 10)
    conn.request("POST", "/v1/mount", body=b"{oops", headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    assert answer.status == 400 and b"not JSON" in answer.read()
    conn.close()

    # A good one, then the same mount point again.
    pid = api.call("POST", "/v1/mount", {"options": good})["pid"]
    assert api.call("GET", "/v1/agents")["agents"] == [
        {"pid": pid, "mountpoint": str(point), "drive": drive.name}
    ]
    refused({"options": good}, f"agent {pid} serves {point} already")
    assert api.call("POST", "/v1/stop", {"mountpoint": str(point)}) == {"stopped": pid}
    assert gone(pid)
    assert api.call("GET", "/v1/agents")["agents"] == []
    assert api.call("POST", "/v1/stop", {"mountpoint": str(point)}) == {"stopped": None}
    subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
    assert b"s3cr3t" not in mounter.log.read_bytes()

    # The plugin's --mounter is checked before anything starts.
    argv = ["run", "--endpoint", f"unix://{base}/c.sock", "--node-id", "n", "--mounter", "x"]
    done = subprocess.run(
        [MEDIADRIVE, "csi-node", *argv], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1 and "--mounter" in done.stderr, done.stderr
    assert "unix:///PATH" in done.stderr
