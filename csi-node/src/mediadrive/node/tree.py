"""Inode numbers, drive paths and mount paths of the mounted folder.

Inode numbers are drive node ids (stable across mounts and machines); the mounted
folder (the drive's root, or ``--subdir``) is FUSE's root inode.
"""

from __future__ import annotations

import asyncio
import posixpath

from mediadrive.core import paths
from mediadrive.core.errors import PathNotFound
from mediadrive.core.meta import MetaStore, Node

# FUSE's number for the root of a mount.
ROOT_INODE = 1


class Tree:
    def __init__(self, meta: MetaStore, root: Node, subdir: str) -> None:
        self.meta = meta
        self.root_id = root.id
        self.subdir = subdir
        self._paths: dict[int, str] = {root.id: subdir}
        # Held by renames and removals in this mount and by commits while they resolve a
        # file's path and record the version: a commit never lands on a stale name.
        self.names = asyncio.Lock()

    def node_id(self, inode: int) -> int:
        return self.root_id if inode == ROOT_INODE else inode

    def inode(self, node_id: int) -> int:
        return ROOT_INODE if node_id == self.root_id else node_id

    def remember(self, node_id: int, path: str) -> None:
        self._paths[node_id] = path

    def forget(self) -> None:
        """Drop every remembered path (after a folder moved)."""
        self._paths = {self.root_id: self.subdir}

    def forget_one(self, node_id: int) -> None:
        if node_id != self.root_id:
            self._paths.pop(node_id, None)

    def known_path(self, node_id: int) -> str | None:
        """The drive path of a node if it is remembered (no walk up)."""
        return self._paths.get(node_id)

    async def path_of(self, node_id: int) -> str:
        """The drive path of a live node, walking up through the metadata if needed."""
        known = self._paths.get(node_id)
        if known is not None:
            return known
        names: list[str] = []
        cursor = node_id
        while cursor != self.root_id:
            node = await self.meta.get_node(cursor)
            if node is None or node.parent_id is None or node.deleted_ns is not None:
                raise PathNotFound(f"node {node_id} is not in this mount")
            names.append(node.name)
            cursor = node.parent_id
        path = posixpath.join(self.subdir, *reversed(names)) if names else self.subdir
        self._paths[node_id] = path
        return path

    async def child_path(self, parent_id: int, name: str) -> str:
        return posixpath.join(await self.path_of(parent_id), name)

    def to_mount(self, drive_path: str) -> str | None:
        """``/sub/a/b`` -> ``/a/b`` for a mount of ``/sub``; None when outside it."""
        if self.subdir == "/":
            return drive_path
        if drive_path == self.subdir:
            return "/"
        if drive_path.startswith(self.subdir + "/"):
            return drive_path[len(self.subdir) :]
        return None

    def to_drive(self, mount_path: str) -> str:
        rel = paths.normalize(mount_path).lstrip("/")
        return posixpath.join(self.subdir, rel) if rel else self.subdir
