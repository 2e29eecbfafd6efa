"""A seeded random-operation integrity tester for a mounted drive.

Two files are worked on through open descriptors with pwrite, mmap writes and reads,
truncates up and down, copy_file_range between them, fallocate (reserve, keep size,
punch a hole), fsync and msync; now and then the drive is saved, and remounted (with
the cache kept or a new one). After every operation both files are read back whole
and compared byte for byte with an in-memory model. The first mismatch raises
:class:`Mismatch` with the seed and the operations so far: the run replays from the
seed alone: the message gives the command.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mediadrive.node.staging import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate

NAMES = ("a.bin", "b.bin")
OPS = (
    ("write", 30),
    ("mmap_write", 10),
    ("mmap_read", 6),
    ("read", 8),
    ("truncate", 8),
    ("copy_range", 6),
    ("fallocate", 6),
    ("fsync", 8),
    ("msync", 4),
    ("save", 1),
)


class Mismatch(AssertionError):
    """The mount and the model disagree; the message says how to replay the run."""


@dataclass
class Hooks:
    """What the tester asks of the mount around it."""

    # Unmount (everything pending committed) and mount again; the new mount folder.
    remount: Callable[[bool], Path]
    # Commit everything now (``mediadrive save``).
    save: Callable[[], None]


@dataclass
class Run:
    seed: int
    root: Path
    hooks: Hooks
    max_size: int = 192 << 10
    # One remount every this many operations on average (a remount takes seconds).
    remount_every: int = 150
    log: list[str] = field(default_factory=list)
    model: dict[str, bytearray] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    # Seconds spent per kind of operation (the check after it included).
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        for name in NAMES:
            self.model[name] = bytearray()
            self.fds[name] = os.open(self.root / name, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    # -- the run -----------------------------------------------------------------------

    def go(self, count: int) -> None:
        kinds = [name for name, _ in OPS]
        weights = [weight for _, weight in OPS]
        try:
            for _ in range(count):
                kind = self.rng.choices(kinds, weights)[0]
                if self.rng.random() * self.remount_every < 1:
                    kind = "remount"
                start = time.monotonic()
                getattr(self, f"op_{kind}")()
                self.check()
                self.seconds[kind] = self.seconds.get(kind, 0.0) + time.monotonic() - start
        finally:
            self.close()

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()

    def fail(self, what: str) -> None:
        replay = (
            f"MEDIADRIVE_INTEGRITY_SEED={self.seed} MEDIADRIVE_INTEGRITY_OPS={len(self.log)} "
            ".venv/bin/pytest -x tests/node/test_integrity.py -k seeded"
        )
        ops = "\n".join(f"  {i}: {op}" for i, op in enumerate(self.log))
        raise Mismatch(f"{what}\nseed {self.seed}, after {len(self.log)} ops ({replay}):\n{ops}")

    def check(self) -> None:
        for name in NAMES:
            expected = self.model[name]
            fd = self.fds[name]
            size = os.fstat(fd).st_size
            if size != len(expected):
                self.fail(f"{name}: size {size}, model {len(expected)}")
            got = os.pread(fd, len(expected) + 1, 0)
            if got != expected:
                at = next(
                    (i for i, (x, y) in enumerate(zip(got, expected, strict=False)) if x != y),
                    min(len(got), len(expected)),
                )
                self.fail(f"{name}: first differing byte at {at} of {len(expected)}")

    # -- helpers -----------------------------------------------------------------------

    def _file(self) -> tuple[str, int, bytearray]:
        name = self.rng.choice(NAMES)
        return name, self.fds[name], self.model[name]

    def _range(self, size: int, limit: int = 64 << 10) -> tuple[int, int]:
        """An offset and a length inside ``size`` bytes (size > 0)."""
        offset = self.rng.randrange(size)
        return offset, self.rng.randint(1, min(limit, size - offset))

    def _bytes(self, length: int) -> bytes:
        return self.rng.randbytes(length)

    @staticmethod
    def _put(model: bytearray, offset: int, data: bytes) -> None:
        if offset > len(model):
            model.extend(bytes(offset - len(model)))
        model[offset : offset + len(data)] = data

    # -- operations --------------------------------------------------------------------

    def op_write(self) -> None:
        name, fd, model = self._file()
        offset = self.rng.randrange(min(len(model) + 4096, self.max_size))
        data = self._bytes(self.rng.randint(1, min(64 << 10, self.max_size - offset)))
        self.log.append(f"write {name} {offset} {len(data)}")
        if os.pwrite(fd, data, offset) != len(data):
            self.fail("short write")
        self._put(model, offset, data)

    def op_mmap_write(self) -> None:
        name, fd, model = self._file()
        if not model:
            return self.op_write()
        offset, length = self._range(len(model))
        data = self._bytes(length)
        self.log.append(f"mmap_write {name} {offset} {length}")
        with mmap.mmap(fd, len(model)) as view:
            view[offset : offset + length] = data
        model[offset : offset + length] = data
        return None

    def op_mmap_read(self) -> None:
        name, fd, model = self._file()
        if not model:
            return None
        offset, length = self._range(len(model))
        self.log.append(f"mmap_read {name} {offset} {length}")
        with mmap.mmap(fd, len(model), prot=mmap.PROT_READ) as view:
            if view[offset : offset + length] != model[offset : offset + length]:
                self.fail(f"{name}: mmap read at {offset}+{length} differs")
        return None

    def op_read(self) -> None:
        name, fd, model = self._file()
        if not model:
            return
        offset, length = self._range(len(model))
        self.log.append(f"read {name} {offset} {length}")
        if os.pread(fd, length, offset) != model[offset : offset + length]:
            self.fail(f"{name}: read at {offset}+{length} differs")

    def op_truncate(self) -> None:
        name, fd, model = self._file()
        size = self.rng.randrange(self.max_size) if self.rng.random() < 0.5 else len(model) // 2
        self.log.append(f"truncate {name} {size}")
        os.ftruncate(fd, size)
        if size < len(model):
            del model[size:]
        else:
            model.extend(bytes(size - len(model)))

    def op_copy_range(self) -> None:
        src, dst = self.rng.sample(NAMES, 2)
        if not self.model[src]:
            return
        offset, length = self._range(len(self.model[src]))
        to = self.rng.randrange(min(len(self.model[dst]) + 4096, self.max_size - length))
        self.log.append(f"copy_range {src} {offset} {length} -> {dst} {to}")
        done = 0
        while done < length:
            n = os.copy_file_range(
                self.fds[src], self.fds[dst], length - done, offset + done, to + done
            )
            if n == 0:
                break
            done += n
        self._put(self.model[dst], to, bytes(self.model[src][offset : offset + done]))

    def op_fallocate(self) -> None:
        name, fd, model = self._file()
        mode = self.rng.choice((0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE))
        offset = self.rng.randrange(self.max_size // 2)
        length = self.rng.randint(1, self.max_size // 2)
        self.log.append(f"fallocate {name} mode={mode} {offset} {length}")
        fallocate(fd, mode, offset, length)
        end = offset + length
        if mode == 0 and end > len(model):
            model.extend(bytes(end - len(model)))
        elif mode & FALLOC_FL_PUNCH_HOLE and offset < len(model):
            end = min(end, len(model))
            model[offset:end] = bytes(end - offset)

    def op_fsync(self) -> None:
        name, fd, _ = self._file()
        self.log.append(f"fsync {name}")
        os.fsync(fd)

    def op_msync(self) -> None:
        name, fd, model = self._file()
        if not model:
            return None
        offset, length = self._range(len(model))
        data = self._bytes(length)
        self.log.append(f"msync {name} {offset} {length}")
        with mmap.mmap(fd, len(model)) as view:
            view[offset : offset + length] = data
            view.flush()
        model[offset : offset + length] = data
        return None

    def op_save(self) -> None:
        self.log.append("save")
        self.hooks.save()

    def op_remount(self) -> None:
        keep = self.rng.random() < 0.5
        self.log.append(f"remount keep_cache={keep}")
        self.close()
        self.root = self.hooks.remount(keep)
        for name in NAMES:
            self.fds[name] = os.open(self.root / name, os.O_RDWR)


def run(seed: int, count: int, root: Path, hooks: Hooks, remount_every: int = 150) -> Run:
    """Run ``count`` operations from ``seed``."""
    tester = Run(seed, root, hooks, remount_every=remount_every)
    tester.go(count)
    return tester
