"""Crash-safe instance files in the state directory.

Every instance is written to a temporary file next to its final name, flushed with
``fsync``, renamed into place with :func:`os.replace` (atomic on POSIX) and the
directory entry is made durable with an ``fsync`` of the directory. A reader therefore
sees either the whole instance or nothing; a crash leaves at most a ``*.part`` file,
which :meth:`Spool.sweep_partials` removes on the next start.

Layout: ``<state_dir>/spool/<study UID>/<series UID>/<SOP instance UID>.dcm``.
UIDs that are not plain dotted digits are replaced by a hash so nothing received from
the network can name a path.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from pacsnode.errors import ReceiveError

__all__ = ["Spool", "safe_component"]

_UID_RE = re.compile(r"^[0-9][0-9.]{0,63}$")
_PART_SUFFIX = ".part"


def safe_component(uid: str) -> str:
    """A path component for a UID: the UID itself when it is dotted digits, else a hash."""
    uid = uid.strip().rstrip("\x00")
    if _UID_RE.match(uid) and ".." not in uid:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:40]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Instance files under ``<state_dir>/spool``."""

    def __init__(self, state_dir: str | Path, *, fsync: bool = True) -> None:
        self.root = Path(state_dir) / "spool"
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance lives (whether or not it is there yet)."""
        return (
            self.root
            / safe_component(study_uid)
            / safe_component(series_uid)
            / (safe_component(sop_instance_uid) + ".dcm")
        )

    def _ensure_dir(self, directory: Path) -> None:
        if directory.is_dir():
            return
        # Create each missing level and make its entry durable in the parent.
        missing: list[Path] = []
        d = directory
        while not d.exists():
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            if self.fsync:
                _fsync_dir(d.parent)

    def write(self, path: Path, chunks: bytes | memoryview | Sequence[bytes | bytearray | memoryview]) -> int:
        """Write ``chunks`` to ``path`` atomically and durably; returns the bytes written.

        Raises :class:`OSError` (e.g. ``ENOSPC``) after removing the temporary file, so
        nothing partial is left behind.
        """
        if isinstance(chunks, bytes | bytearray | memoryview):
            chunks = [chunks]
        self._ensure_dir(path.parent)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}{_PART_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        size = 0
        try:
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                        size += n
                if self.fsync:
                    os.fdatasync(fd)  # data and the size; the rename is made durable below
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:
            _fsync_dir(path.parent)
        return size

    def free_mb(self) -> float:
        """Free space on the spool's file system, in MiB (what an unprivileged user may use)."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize / (1024 * 1024)

    def check_space(self, min_free_mb: float) -> None:
        """Raise :class:`ReceiveError` when free space is below the configured mark."""
        free = self.free_mb()
        if free < min_free_mb:
            raise ReceiveError(
                f"free disk space must be at least node.min_free_disk_mb = {min_free_mb:g} MiB, "
                f"got {free:.0f} MiB free in {self.root}"
            )

    def files(self) -> Iterator[Path]:
        """Every complete instance file in the spool."""
        yield from self.root.glob("*/*/*.dcm")

    def sweep_partials(self) -> int:
        """Remove temporary files a crash left behind; returns how many."""
        n = 0
        for p in self.root.glob(f"*/*/*{_PART_SUFFIX}"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def remove(self, path: Path) -> None:
        """Remove one instance file and its now-empty series and study folders."""
        Path(path).unlink(missing_ok=True)
        for d in (Path(path).parent, Path(path).parent.parent):
            if d == self.root or self.root not in d.parents:
                break
            try:
                d.rmdir()
            except OSError:
                break

    def remove_tree(self, directory: Path) -> None:
        """Remove a series or study folder inside the spool."""
        directory = Path(directory)
        if self.root in directory.parents:
            shutil.rmtree(directory, ignore_errors=True)
