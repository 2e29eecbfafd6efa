"""What the plugin staged and published, kept on disk so it outlives the plugin.

One JSON file per volume in ``STATE/volumes`` (0600 in 0700 folders: a record holds
the mount options, secrets included, needed to restart a dead agent). The node
agents' own registry (:class:`~mediadrive.node.registry.MountRegistry`) lives in
``STATE/run``; their caches in ``STATE/cache/KEY``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, ValidationError

from mediadrive.core import private
from mediadrive.core.errors import ConfigError

from ..options import MountOptions
from ..registry import MountRegistry

# Volume context keys (the operator's DriveVolume renders them; docs/csi.md).
DRIVE = "drive"
STORE_URL = "storeUrl"
POD_PREFIX = "pod."
WORKSPACE_PREFIX = "workspace."
WORKSPACE = "workspace"
EPHEMERAL = "csi.storage.k8s.io/ephemeral"
# Secret keys.
META_URL = "metaUrl"
AWS_KEYS = {"awsAccessKeyId": "AWS_ACCESS_KEY_ID", "awsSecretAccessKey": "AWS_SECRET_ACCESS_KEY"}
POD_TOKEN = "podToken"


def volume_key(volume_id: str) -> str:
    return hashlib.sha256(volume_id.encode()).hexdigest()[:16]


class Target(BaseModel):
    """A bind mount of a staged volume: read-only or not, of which drive folder."""

    model_config = ConfigDict(extra="forbid")

    read_only: bool = False
    # The folder of the mount it shows ("" for all of it): a workspace.
    subdir: str = ""


class VolumeRecord(BaseModel):
    """One volume of this node: its agent's mount point and options, its targets."""

    model_config = ConfigDict(extra="forbid")

    volume_id: str
    # The staging path, or for an ephemeral volume the pod's target path.
    mountpoint: str
    ephemeral: bool = False
    # The volume context (no secrets in it): drive, stores, workspaces.
    context: dict[str, str] = {}
    # MountOptions as given (unset fields left out, so the drive's policy fills them);
    # None while the secrets it needs have not come yet (see NodeStageVolume).
    options: dict[str, Any] | None = None
    # Added to the agent's environment: the object store's keys.
    env: dict[str, str] = {}
    # Bind-mount targets, by path.
    targets: dict[str, Target] = {}

    def mount_options(self) -> MountOptions | None:
        return None if self.options is None else MountOptions.model_validate(self.options)


class StateStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.volumes_dir = self.root / "volumes"
        self.run_dir = self.root / "run"
        self.cache_root = self.root / "cache"
        self.secrets_dir = self.root / "secrets"
        self.registry = MountRegistry(self.run_dir)
        for folder in (self.root, self.volumes_dir, self.run_dir, self.secrets_dir):
            private.make_dir(folder, tighten=True)
        private.make_dir(self.cache_root)

    def _path(self, volume_id: str) -> Path:
        return self.volumes_dir / f"{volume_key(volume_id)}.json"

    def load(self, volume_id: str) -> VolumeRecord | None:
        try:
            record = VolumeRecord.model_validate_json(self._path(volume_id).read_text())
        except (OSError, ValidationError):
            return None
        return record if record.volume_id == volume_id else None

    def save(self, record: VolumeRecord) -> None:
        path = self._path(record.volume_id)
        tmp = path.with_suffix(".tmp")
        private.write_file(tmp, record.model_dump_json(indent=2) + "\n")
        tmp.replace(path)

    def remove(self, volume_id: str) -> None:
        self._path(volume_id).unlink(missing_ok=True)
        (self.secrets_dir / f"{volume_key(volume_id)}.token").unlink(missing_ok=True)

    def records(self) -> list[VolumeRecord]:
        found = []
        for path in sorted(self.volumes_dir.glob("*.json")):
            try:
                found.append(VolumeRecord.model_validate_json(path.read_text()))
            except (OSError, ValidationError):
                continue
        return found

    # -- mount options from a volume's context and secrets ----------------------------------

    def build(
        self,
        volume_id: str,
        mountpoint: Path,
        context: dict[str, str],
        secrets: dict[str, str],
        *,
        author: str,
        region: str | None,
        read_only: bool = False,
        subdir: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, str]] | None:
        """The agent's options and extra environment, or None without a ``metaUrl``
        secret. Raises :class:`ConfigError` naming what is wrong or missing."""
        for key in (DRIVE, STORE_URL):
            if not context.get(key):
                raise ConfigError(f"volume context has no {key!r}")
        meta_url = secrets.get(META_URL)
        if not meta_url:
            return None
        key = volume_key(volume_id)
        values: dict[str, Any] = {
            "drive": context[DRIVE],
            "meta_url": meta_url,
            "store_url": context[STORE_URL],
            "mountpoint": str(mountpoint),
            "cache_dir": str(self.cache_root / key),
            "run_dir": str(self.run_dir),
            "author": author,
            # Pods run as any user; the mount's own permission checks still hold.
            "allow_other": True,
        }
        pod_url = self._pod_url(key, context, secrets, region)
        if pod_url is not None:
            values["pod_url"] = pod_url
            if region:
                values["region"] = region
        if read_only:
            values["read_only"] = True
        if subdir:
            values["subdir"] = subdir
        try:
            MountOptions.model_validate(values)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"])
            raise ConfigError(f"volume {volume_id}: {where}: {problem['msg']}") from None
        env = {name: secrets[k] for k, name in AWS_KEYS.items() if secrets.get(k)}
        return values, env

    def _pod_url(
        self, key: str, context: dict[str, str], secrets: dict[str, str], region: str | None
    ) -> str | None:
        pods = {k[len(POD_PREFIX) :]: v for k, v in context.items() if k.startswith(POD_PREFIX)}
        if region is not None:
            url = pods.get(region)
        else:
            url = next(iter(pods.values())) if len(pods) == 1 else None
        if not url:
            return None
        token = secrets.get(POD_TOKEN)
        if token:
            # In a file only root reads, named by the URL: never in argv or the URL.
            token_file = self.secrets_dir / f"{key}.token"
            private.write_file(token_file, token.strip() + "\n")
            url += ("&" if "?" in url else "?") + "token_file=" + quote(str(token_file), safe="/")
        return url


def workspace_path(context: dict[str, str]) -> str | None:
    """The drive folder a ``workspace`` attribute names (``workspace.NAME``), or None."""
    name = context.get(WORKSPACE)
    if not name:
        return None
    path = context.get(WORKSPACE_PREFIX + name)
    if path is None:
        known = sorted(
            k[len(WORKSPACE_PREFIX) :] for k in context if k.startswith(WORKSPACE_PREFIX)
        )
        raise ConfigError(
            f"volume context names workspace {name!r}, which the drive does not have"
            + (f" (it has {', '.join(known)})" if known else "")
        )
    return path
