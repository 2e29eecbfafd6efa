"""What a pod sees while its drive's agent is restarted (docs/csi.md).

A pod's container has its own mount namespace with a copy of the target's bind.
Here `unshare -m` makes one: with slave propagation (kubelet's HostToContainer,
over kubelet's shared folder) it sees the new mount after the restart; with
private propagation (the default) it keeps the dead one."""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import DriveFixture, PluginProcess
from .test_node import kill_agent, publish, stage, stats

READER = """
import sys
for line in sys.stdin:
    try:
        print(open(line.strip()).read(), flush=True)
    except OSError as exc:
        print("errno", exc.errno, flush=True)
"""


class Container:
    """A process in its own mount namespace that reads files when asked."""

    def __init__(self, propagation: str) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", propagation, sys.executable, "-c", READER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self, path: Path) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def shared(base: Path) -> Iterator[Path]:
    """``base`` as a shared mount, as kubelet makes /var/lib/kubelet."""
    subprocess.run(["mount", "--bind", str(base), str(base)], check=True)
    subprocess.run(["mount", "--make-rshared", str(base)], check=True)
    try:
        yield base
    finally:
        subprocess.run(["umount", "-l", str(base)], check=False)


@pytest.mark.parametrize("propagation", ["slave", "private"])
def test_a_pod_sees_the_restarted_mount_only_with_slave_propagation(
    shared: Path, drive: DriveFixture, propagation: str
) -> None:
    plugin = PluginProcess(shared)
    plugin.start(health_interval=3600)
    container: Container | None = None
    try:
        client = plugin.client()
        staging, target = shared / "staging", shared / "pods/a/vol"
        staging.mkdir()
        stage(client, drive, staging)
        publish(client, drive, staging, target)
        (target / "frame.txt").write_text("1001")
        container = Container(propagation)
        assert container.read(target / "frame.txt") == "1001"

        kill_agent(plugin, staging)
        # ECONNABORTED while the kernel still tears the connection down.
        dead = {f"errno {errno.ENOTCONN}", f"errno {errno.ECONNABORTED}"}
        assert container.read(target / "frame.txt") in dead
        assert not stats(client, target).volume_condition.abnormal
        assert (target / "frame.txt").read_text() == "1001"  # the host's view
        seen = container.read(target / "frame.txt")
        if propagation == "slave":
            assert seen == "1001"
        else:
            assert seen in dead
    finally:
        if container is not None:
            container.close()
        plugin.stop()
