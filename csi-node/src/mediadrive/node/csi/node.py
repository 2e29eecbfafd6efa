"""The node's volumes: stage, publish, unpublish, unstage, stats and healing.

Every method here blocks (it starts agents and runs mount(8)); :mod:`.server` calls
them in a worker thread, one call per volume at a time. Failures are
:class:`CsiError` with the gRPC status code the CSI spec asks for.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from mediadrive.core.credentials import redact_url
from mediadrive.core.errors import ConfigError, MediadriveError

from .. import client
from . import hostmounts
from .launcher import AgentLauncher, LaunchError, LocalLauncher
from .state import EPHEMERAL, StateStore, Target, VolumeRecord, workspace_path

log = logging.getLogger("mediadrive.node.csi")


class CsiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> CsiError:
    return CsiError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass
class Stats:
    """statvfs figures of a volume path, or why the volume is not healthy."""

    bytes_total: int = 0
    bytes_available: int = 0
    bytes_used: int = 0
    inodes_total: int = 0
    inodes_available: int = 0
    inodes_used: int = 0
    abnormal: bool = False
    message: str = ""


class NodeVolumes:
    def __init__(
        self,
        state: StateStore,
        node_id: str,
        region: str | None = None,
        launcher: AgentLauncher | None = None,
    ) -> None:
        self.state = state
        # Who starts agents: this process, or the mounter (another container's process).
        self.launcher = launcher or LocalLauncher(state.registry)
        self.node_id = node_id
        self.region = region
        self.author = f"csi@{node_id}"
        self.restarts = 0

    # -- the agent of a volume ---------------------------------------------------------------

    def healthy(self, record: VolumeRecord) -> bool:
        """The volume's agent runs and its mount answers."""
        entry = self.state.registry.entry_for(record.mountpoint)
        return (
            entry is not None
            and hostmounts.is_mounted(record.mountpoint)
            and not hostmounts.disconnected(record.mountpoint)
        )

    def heal(self, record: VolumeRecord) -> bool:
        """Start the volume's agent if it is not running (again, at the same path: its
        staging journal recovers what was pending) and bind its targets anew. True when
        it had to."""
        options = record.mount_options()
        if options is None or self.healthy(record):
            return False
        mountpoint = Path(record.mountpoint)
        entry = self.state.registry.entry_for(mountpoint)
        if entry is not None:
            # Alive but its mount is gone or dead: it cannot serve; stop it.
            log.warning("the agent of %s (pid %d) lost its mount", mountpoint, entry.pid)
            self._launch(lambda: self.launcher.stop(mountpoint), f"stop the agent of {mountpoint}")
        if hostmounts.is_mounted(mountpoint):
            log.warning("detaching the dead mount at %s", mountpoint)
            hostmounts.unmount(mountpoint, lazy=True)
        if not mountpoint.is_dir():
            # Made by kubelet (or by the publish, for an ephemeral volume): when it is
            # gone, so is the pod or the stage; the unstage or unpublish forgets it.
            raise CsiError(grpc.StatusCode.FAILED_PRECONDITION, f"mount point {mountpoint} is gone")
        self._start(record)
        self.restarts += 1
        for path, target in list(record.targets.items()):
            if not Path(path).parent.is_dir():
                log.info("forgetting %s: its pod's folder is gone", path)
                del record.targets[path]
                self.state.save(record)
                continue
            self._bind(record, Path(path), target)
        return True

    def _start(self, record: VolumeRecord) -> None:
        options = record.mount_options()
        assert options is not None
        log.info("mounting drive %s at %s", options.drive, options.mountpoint)
        self._launch(
            lambda: self.launcher.start(options, record.env),
            f"mount drive {options.drive} at {options.mountpoint}",
        )

    def _launch(self, body: Callable[[], object], what: str) -> None:
        try:
            body()
        except LaunchError as exc:
            code = grpc.StatusCode.UNAVAILABLE if exc.unavailable else grpc.StatusCode.INTERNAL
            raise CsiError(code, f"cannot {what}: {redact_url(exc.message)}") from None

    def _bind(self, record: VolumeRecord, path: Path, target: Target) -> None:
        # A target whose agent died is bound again on top of its dead bind, not in its
        # place: a container holds a copy of the target's own mount (not of its parent
        # folder), so only a mount stacked on that one propagates into it
        # (HostToContainer). The unpublish unmounts every layer.
        source = Path(record.mountpoint)
        if target.subdir:
            source = source / target.subdir.strip("/")
            if not source.is_dir():
                raise CsiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"workspace folder {target.subdir} is not a folder of the drive",
                )
        if not hostmounts.is_mounted(path):
            # (A dead bind there answers ENOTCONN to mkdir's stat.)
            path.mkdir(parents=True, exist_ok=True)
        try:
            hostmounts.bind(source, path, target.read_only)
        except hostmounts.HostMountError as exc:
            raise CsiError(grpc.StatusCode.INTERNAL, str(exc)) from None

    def _options(
        self,
        volume_id: str,
        mountpoint: Path,
        context: dict[str, str],
        secrets: dict[str, str],
        **extra: Any,
    ) -> tuple[dict[str, Any], dict[str, str]] | None:
        try:
            return self.state.build(
                volume_id,
                mountpoint,
                context,
                secrets,
                author=self.author,
                region=self.region,
                **extra,
            )
        except ConfigError as exc:
            raise invalid(str(exc)) from None

    # -- stage and unstage -------------------------------------------------------------------

    def stage(
        self, volume_id: str, staging: Path, context: dict[str, str], secrets: dict[str, str]
    ) -> None:
        record = self.state.load(volume_id)
        if record is not None and record.mountpoint != str(staging):
            raise CsiError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"volume {volume_id} is staged at {record.mountpoint}, not {staging}",
            )
        built = self._options(volume_id, staging, context, secrets)
        if record is None:
            record = VolumeRecord(volume_id=volume_id, mountpoint=str(staging))
        record.context = dict(context)
        if built is not None and record.options is None:
            record.options, record.env = built
        self.state.save(record)
        if record.options is None:
            # No secrets at stage (the PV names only a publish secret): the first
            # publish brings them and mounts here.
            log.info("volume %s staged; it mounts at its first publish", volume_id)
            return
        staging.mkdir(parents=True, exist_ok=True)
        try:
            self.heal(record)
        except CsiError:
            if not record.targets:
                self.state.remove(volume_id)
            raise

    def unstage(self, volume_id: str, staging: Path) -> None:
        record = self.state.load(volume_id)
        if record is not None and record.mountpoint != str(staging):
            raise CsiError(
                grpc.StatusCode.NOT_FOUND,
                f"volume {volume_id} is staged at {record.mountpoint}, not {staging}",
            )
        busy = [t for t in (record.targets if record else {}) if hostmounts.is_mounted(t)]
        if busy:
            # Unmounting under a pod's bind would leave it a dead mount.
            raise CsiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"volume {volume_id} is still published at {', '.join(sorted(busy))}",
            )
        if record is not None and record.options is not None and not self.healthy(record):
            # Restart a dead agent first: its journal holds writes not yet committed.
            with contextlib.suppress(CsiError):
                self.heal(record)
        self._unmount_agent(staging)
        if record is not None:
            self.state.remove(volume_id)

    def _unmount_agent(self, mountpoint: Path) -> None:
        """Commit what is pending and unmount the agent at ``mountpoint``."""
        if self.state.registry.entry_for(mountpoint) is not None:
            try:
                client.umount(mountpoint, self.state.registry, force=True)
            except MediadriveError as exc:
                raise CsiError(
                    grpc.StatusCode.INTERNAL,
                    f"cannot unmount {mountpoint}: {redact_url(str(exc))}",
                ) from None
        if hostmounts.is_mounted(mountpoint):
            hostmounts.unmount(mountpoint, lazy=True)

    # -- publish and unpublish ---------------------------------------------------------------

    def publish(
        self,
        volume_id: str,
        target: Path,
        staging: Path | None,
        context: dict[str, str],
        secrets: dict[str, str],
        read_only: bool,
    ) -> None:
        if context.get(EPHEMERAL) == "true":
            self._publish_ephemeral(volume_id, target, context, secrets, read_only)
            return
        if staging is None:
            raise CsiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"volume {volume_id} has no staging path: it must be staged first",
            )
        record = self.state.load(volume_id)
        if record is None or record.mountpoint != str(staging):
            raise CsiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"volume {volume_id} is not staged at {staging}",
            )
        if record.options is None:
            built = self._options(volume_id, staging, record.context, secrets)
            if built is None:
                raise invalid(f"volume {volume_id}: no {'metaUrl'!r} secret at stage or publish")
            record.options, record.env = built
            self.state.save(record)
        self.heal(record)
        try:
            # The publish's own context may name a workspace (the stage's is the PV's).
            wanted = Target(
                read_only=read_only, subdir=workspace_path(record.context | context) or ""
            )
        except ConfigError as exc:
            raise invalid(str(exc)) from None
        key = str(target)
        if key in record.targets and hostmounts.is_mounted(target):
            if record.targets[key] != wanted:
                raise CsiError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"{target} is published already, with other options",
                )
            return
        if hostmounts.is_mounted(target):
            raise CsiError(grpc.StatusCode.ALREADY_EXISTS, f"something else is mounted at {target}")
        self._bind(record, target, wanted)
        record.targets[key] = wanted
        self.state.save(record)

    def _publish_ephemeral(
        self,
        volume_id: str,
        target: Path,
        context: dict[str, str],
        secrets: dict[str, str],
        read_only: bool,
    ) -> None:
        record = self.state.load(volume_id)
        if record is not None:
            if record.mountpoint != str(target):
                raise CsiError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"ephemeral volume {volume_id} is published at {record.mountpoint}",
                )
            self.heal(record)
            return
        try:
            subdir = workspace_path(context)
        except ConfigError as exc:
            raise invalid(str(exc)) from None
        built = self._options(
            volume_id, target, context, secrets, read_only=read_only, subdir=subdir
        )
        if built is None:
            raise invalid(f"ephemeral volume {volume_id}: no {'metaUrl'!r} secret")
        record = VolumeRecord(volume_id=volume_id, mountpoint=str(target), ephemeral=True)
        record.options, record.env = built
        record.context = dict(context)
        target.mkdir(parents=True, exist_ok=True)
        self.state.save(record)
        try:
            self.heal(record)
        except CsiError:
            self.state.remove(volume_id)
            hostmounts.remove_folder(target)
            raise

    def unpublish(self, volume_id: str, target: Path) -> None:
        record = self.state.load(volume_id)
        if record is not None and record.ephemeral and record.mountpoint == str(target):
            if record.options is not None and not self.healthy(record):
                with contextlib.suppress(CsiError):
                    self.heal(record)
            self._unmount_agent(target)
            self.state.remove(volume_id)
            hostmounts.remove_folder(target)
            return
        try:
            hostmounts.unmount(target)
        except hostmounts.HostMountError as exc:
            raise CsiError(grpc.StatusCode.INTERNAL, str(exc)) from None
        if record is not None and record.targets.pop(str(target), None) is not None:
            self.state.save(record)
        try:
            hostmounts.remove_folder(target)
        except OSError as exc:
            raise CsiError(grpc.StatusCode.INTERNAL, f"cannot remove {target}: {exc}") from None

    # -- figures -----------------------------------------------------------------------------

    def stats(self, volume_id: str, path: Path) -> Stats:
        record = self.state.load(volume_id)
        if record is None:
            raise CsiError(grpc.StatusCode.NOT_FOUND, f"volume {volume_id} is not on this node")
        if str(path) != record.mountpoint and str(path) not in record.targets:
            raise CsiError(
                grpc.StatusCode.NOT_FOUND, f"volume {volume_id} is not published at {path}"
            )
        if record.options is None:
            return Stats(abnormal=True, message="staged; mounts at its first publish")
        try:
            if self.heal(record):
                log.info("restarted the agent of volume %s", volume_id)
        except CsiError as exc:
            return Stats(abnormal=True, message=exc.message)
        try:
            st = os.statvfs(path)
        except OSError as exc:
            return Stats(abnormal=True, message=f"{path}: {exc.strerror}")
        return Stats(
            bytes_total=st.f_blocks * st.f_frsize,
            bytes_available=st.f_bavail * st.f_frsize,
            bytes_used=(st.f_blocks - st.f_bfree) * st.f_frsize,
            inodes_total=st.f_files,
            inodes_available=st.f_favail,
            inodes_used=max(st.f_files - st.f_ffree, 0),
        )
