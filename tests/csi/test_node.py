"""The node plugin over its real socket, as kubelet drives it: real agents, real
FUSE and bind mounts, a drive in SQLite and a local folder store."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from mediadrive.node.registry import MountRegistry

from .conftest import (
    MEDIADRIVE,
    CsiClient,
    DriveFixture,
    PluginProcess,
    csi,
    free_port,
    mount_capability,
    reg,
)

VOLUME = "default.media"


def stage(client: CsiClient, drive: DriveFixture, staging: Path, **secrets: str) -> None:
    client.call(
        "NodeStageVolume",
        csi.NodeStageVolumeRequest(
            volume_id=VOLUME,
            staging_target_path=str(staging),
            volume_capability=mount_capability(),
            volume_context=drive.context(),
            secrets=drive.secrets() | secrets,
        ),
        csi.NodeStageVolumeResponse,
    )


def publish(
    client: CsiClient, drive: DriveFixture, staging: Path, target: Path, read_only: bool = False
) -> None:
    client.call(
        "NodePublishVolume",
        csi.NodePublishVolumeRequest(
            volume_id=VOLUME,
            staging_target_path=str(staging),
            target_path=str(target),
            volume_capability=mount_capability(),
            readonly=read_only,
            volume_context=drive.context(),
        ),
        csi.NodePublishVolumeResponse,
    )


def unpublish(client: CsiClient, target: Path, volume: str = VOLUME) -> None:
    client.call(
        "NodeUnpublishVolume",
        csi.NodeUnpublishVolumeRequest(volume_id=volume, target_path=str(target)),
        csi.NodeUnpublishVolumeResponse,
    )


def unstage(client: CsiClient, staging: Path) -> None:
    client.call(
        "NodeUnstageVolume",
        csi.NodeUnstageVolumeRequest(volume_id=VOLUME, staging_target_path=str(staging)),
        csi.NodeUnstageVolumeResponse,
    )


def stats(client: CsiClient, path: Path, volume: str = VOLUME) -> csi.NodeGetVolumeStatsResponse:
    return client.call(
        "NodeGetVolumeStats",
        csi.NodeGetVolumeStatsRequest(volume_id=volume, volume_path=str(path)),
        csi.NodeGetVolumeStatsResponse,
    )


def agent_pid(plugin: PluginProcess, mountpoint: Path) -> int:
    entry = MountRegistry(plugin.state_dir / "run").entry_for(mountpoint)
    assert entry is not None, f"no agent serves {mountpoint}"
    return entry.pid


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not exit")


def test_stage_publish_write_read_unstage(
    base: Path, drive: DriveFixture, plugin: PluginProcess
) -> None:
    client = plugin.client()
    staging, rw, ro = base / "staging", base / "pods/a/vol", base / "pods/b/vol"
    staging.mkdir()
    stage(client, drive, staging, awsAccessKeyId="AKIDTEST", awsSecretAccessKey="k3y")
    stage(client, drive, staging)  # idempotent

    # Credentials reach the agent on stdin and in its environment, never in argv.
    pid = agent_pid(plugin, staging)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b"sqlite" not in cmdline and b"AKIDTEST" not in cmdline
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"AWS_ACCESS_KEY_ID=AKIDTEST" in environ
    assert b"AWS_SECRET_ACCESS_KEY=k3y" in environ
    assert b"k3y" not in plugin.log.read_bytes()

    publish(client, drive, staging, rw)
    publish(client, drive, staging, ro, read_only=True)
    publish(client, drive, staging, ro, read_only=True)  # idempotent

    (rw / "shot.exr").write_bytes(b"frame one")
    assert (ro / "shot.exr").read_bytes() == b"frame one"
    with pytest.raises(OSError) as failed:
        (ro / "other.exr").write_bytes(b"no")
    assert failed.value.errno == errno.EROFS

    reply = stats(client, rw)
    usage = {u.unit: u for u in reply.usage}
    assert usage[csi.VolumeUsage.Unit.BYTES].total > 0
    assert not reply.volume_condition.abnormal

    # The mount keeps the edit staged (no checkpoint yet); unstage must upload it.
    with open(rw / "shot.exr", "r+b") as f:
        f.write(b"FRAME")
    for target in (rw, ro):
        unpublish(client, target)
        unpublish(client, target)  # idempotent
        assert not target.exists()
    unstage(client, staging)
    unstage(client, staging)  # idempotent
    assert not os.path.ismount(staging)
    data, _version = drive.read("/shot.exr")
    assert data == b"FRAME one"
    with pytest.raises(grpc.RpcError) as missing:
        stats(client, rw)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def kill_agent(plugin: PluginProcess, mountpoint: Path) -> int:
    pid = agent_pid(plugin, mountpoint)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    return pid


def test_plugin_and_agent_restarts(base: Path, drive: DriveFixture, plugin: PluginProcess) -> None:
    client = plugin.client()
    staging, target = base / "staging", base / "pods/a/vol"
    staging.mkdir()
    stage(client, drive, staging)
    publish(client, drive, staging, target)
    (target / "a.txt").write_text("before")

    # The plugin dies; the agent and the pod's bind mount do not notice. The new
    # plugin checks its agents only when called (an hour between periodic checks).
    first_agent = agent_pid(plugin, staging)
    plugin.kill()
    assert (target / "a.txt").read_text() == "before"
    plugin.start(health_interval=3600)
    client = plugin.client()
    assert agent_pid(plugin, staging) == first_agent
    assert not stats(client, target).volume_condition.abnormal
    (target / "b.txt").write_text("after plugin restart")

    # The agent dies: the mount answers ENOTCONN until a call restarts the agent.
    kill_agent(plugin, staging)
    with pytest.raises(OSError) as dead:
        os.listdir(target)
    assert dead.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    reply = stats(client, target)
    assert not reply.volume_condition.abnormal, reply.volume_condition.message
    assert agent_pid(plugin, staging) != first_agent
    assert (target / "a.txt").read_text() == "before"
    assert (target / "b.txt").read_text() == "after plugin restart"

    # Again, and a publish of another target restarts it this time.
    kill_agent(plugin, staging)
    second_target = base / "pods/b/vol"
    publish(client, drive, staging, second_target)
    assert (second_target / "b.txt").read_text() == "after plugin restart"
    (target / "c.txt").write_text("after agent restart")
    unpublish(client, second_target)

    # Stopped in order this time (SIGTERM): the mounts stay as they are.
    plugin.stop()
    assert (target / "c.txt").read_text() == "after agent restart"
    # Killed again with no call to come: the periodic check (every second) heals it.
    plugin.start(health_interval=1)
    client = plugin.client()
    kill_agent(plugin, staging)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if (target / "c.txt").read_text() == "after agent restart":
                break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        raise AssertionError("the health loop did not restart the agent")
    unpublish(client, target)
    unstage(client, staging)
    assert drive.read("/c.txt")[0] == b"after agent restart"


def test_unstage_commits_what_a_dead_agent_journaled(
    base: Path, drive: DriveFixture, plugin: PluginProcess
) -> None:
    plugin.kill()
    plugin.start(health_interval=3600)
    client = plugin.client()
    staging, target = base / "staging", base / "pods/a/vol"
    staging.mkdir()
    stage(client, drive, staging)
    publish(client, drive, staging, target)
    # Acknowledged by fsync, not committed (still open), then the agent dies.
    f = open(target / "render.log", "wb")  # noqa: SIM115
    f.write(b"frame 1001 done\n")
    f.flush()
    os.fsync(f.fileno())
    kill_agent(plugin, staging)
    with contextlib.suppress(OSError):
        f.close()
    unpublish(client, target)
    unstage(client, staging)
    assert drive.read("/render.log")[0] == b"frame 1001 done\n"


def test_ephemeral_inline_volume(base: Path, drive: DriveFixture, plugin: PluginProcess) -> None:
    client = plugin.client()
    target = base / "pods/e/vol"
    request = csi.NodePublishVolumeRequest(
        volume_id="csi-ephemeral-1",
        target_path=str(target),
        volume_capability=mount_capability(),
        volume_context=drive.context(**{"csi.storage.k8s.io/ephemeral": "true"}),
        secrets=drive.secrets(),
    )
    client.call("NodePublishVolume", request, csi.NodePublishVolumeResponse)
    client.call("NodePublishVolume", request, csi.NodePublishVolumeResponse)
    (target / "inline.txt").write_text("inline")
    assert not stats(client, target, "csi-ephemeral-1").volume_condition.abnormal
    unpublish(client, target, "csi-ephemeral-1")
    unpublish(client, target, "csi-ephemeral-1")
    assert not target.exists()
    assert drive.read("/inline.txt")[0] == b"inline"


def test_workspace_publish(base: Path, drive: DriveFixture, plugin: PluginProcess) -> None:
    client = plugin.client()
    staging, whole, part = base / "staging", base / "pods/a/vol", base / "pods/b/vol"
    staging.mkdir()
    stage(client, drive, staging)
    publish(client, drive, staging, whole)
    (whole / "shots" / "sq010").mkdir(parents=True)
    (whole / "shots" / "sq010" / "plate.exr").write_text("plate")
    client.call(
        "NodePublishVolume",
        csi.NodePublishVolumeRequest(
            volume_id=VOLUME,
            staging_target_path=str(staging),
            target_path=str(part),
            volume_capability=mount_capability(),
            volume_context=drive.context(
                **{"workspace": "sq010", "workspace.sq010": "/shots/sq010"}
            ),
        ),
        csi.NodePublishVolumeResponse,
    )
    assert os.listdir(part) == ["plate.exr"]
    unpublish(client, part)
    unpublish(client, whole)
    unstage(client, staging)


def test_errors(base: Path, drive: DriveFixture, plugin: PluginProcess) -> None:
    client = plugin.client()
    cases = [
        ("NodeStageVolume", csi.NodeStageVolumeRequest(staging_target_path="/x")),
        ("NodeStageVolume", csi.NodeStageVolumeRequest(volume_id="v", staging_target_path="/x")),
        (
            "NodeStageVolume",
            csi.NodeStageVolumeRequest(
                volume_id="v",
                staging_target_path=str(base / "s"),
                volume_capability=mount_capability(),
                volume_context={"storeUrl": drive.store_url},
                secrets=drive.secrets(),
            ),
        ),
        ("NodePublishVolume", csi.NodePublishVolumeRequest(volume_id="v")),
        ("NodeUnpublishVolume", csi.NodeUnpublishVolumeRequest(target_path="/x")),
        ("NodeGetVolumeStats", csi.NodeGetVolumeStatsRequest(volume_id="v")),
    ]
    for method, request in cases:
        with pytest.raises(grpc.RpcError) as failed:
            client.call(method, request, csi.NodeStageVolumeResponse)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, request)
    with pytest.raises(grpc.RpcError) as failed:
        publish(client, drive, base / "never-staged", base / "t")
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_registration_and_metrics(base: Path, drive: DriveFixture) -> None:
    plugin = PluginProcess(base)
    port = free_port()
    plugin.start("--metrics-port", str(port), "--kubelet-endpoint", "/kubelet/csi.sock")
    try:
        client = CsiClient(plugin.registration_dir / "csi.mediadrive.io-reg.sock")
        info = client.call("GetInfo", reg.InfoRequest(), reg.PluginInfo)
        assert (info.type, info.name, info.endpoint) == (
            "CSIPlugin",
            "csi.mediadrive.io",
            "/kubelet/csi.sock",
        )
        assert list(info.supported_versions) == ["1.0.0"]
        client.call(
            "NotifyRegistrationStatus",
            reg.RegistrationStatus(plugin_registered=True),
            reg.RegistrationStatusResponse,
        )
        staging = base / "staging"
        staging.mkdir()
        stage(plugin.client(), drive, staging)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as reply:
            assert reply.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as reply:
            text = reply.read().decode()
        assert "mediadrive_csi_volumes 1" in text
        assert 'mediadrive_csi_agent_up{volume="default.media",drive="media"} 1' in text
        assert "mediadrive_csi_cache_bytes{" in text
        unstage(plugin.client(), staging)
    finally:
        plugin.stop()


def test_secrets_only_at_publish(base: Path, drive: DriveFixture, plugin: PluginProcess) -> None:
    """The operator's PV names a nodePublishSecretRef only: the mount waits for it."""
    client = plugin.client()
    staging, target = base / "staging", base / "pods/a/vol"
    staging.mkdir()
    client.call(
        "NodeStageVolume",
        csi.NodeStageVolumeRequest(
            volume_id=VOLUME,
            staging_target_path=str(staging),
            volume_capability=mount_capability(),
            volume_context=drive.context(),
        ),
        csi.NodeStageVolumeResponse,
    )
    assert not os.path.ismount(staging)
    client.call(
        "NodePublishVolume",
        csi.NodePublishVolumeRequest(
            volume_id=VOLUME,
            staging_target_path=str(staging),
            target_path=str(target),
            volume_capability=mount_capability(),
            volume_context=drive.context(),
            secrets=drive.secrets(),
        ),
        csi.NodePublishVolumeResponse,
    )
    (target / "late.txt").write_text("mounted at publish")
    unpublish(client, target)
    unstage(client, staging)
    assert drive.read("/late.txt")[0] == b"mounted at publish"


def test_cli_refuses_a_bad_endpoint(base: Path) -> None:
    done = subprocess.run(
        [MEDIADRIVE, "csi-node", "run", "--endpoint", "tcp://0:1", "--node-id", "n"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "--endpoint" in done.stderr and "unix:///PATH" in done.stderr
