"""Crash-safe instance files in the state directory.

Every instance is written to a temporary file next to its final name and renamed into
place with :func:`os.replace` (atomic on POSIX), so a reader sees either the whole
instance or nothing; a crash leaves at most a ``*.part`` file, which
:meth:`Spool.sweep_partials` removes on the next start.

Durability, before :meth:`Spool.write` returns: with a :class:`SpoolJournal` (the node's
default) the file's bytes are first appended to the journal with one data-only flush,
and the journal's checkpoints make the files themselves durable in the background
(:mod:`pacsnode.receive.journal`); without one, or for a file too large for a journal
segment, the temp file is ``fdatasync``-ed before the rename and the directory ``fsync``-ed
after it.

Layout: ``<state_dir>/spool/<study UID>/<series UID>/<SOP instance UID>.dcm``.
UIDs that are not plain dotted digits are replaced by a hash so nothing received from
the network can name a path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pacsnode.receive.journal import SpoolJournal, fsync_dir
from pacsnode.receive.validate import STATUS_OUT_OF_RESOURCES, Refusal

__all__ = ["Spool", "safe_component"]

LOG = logging.getLogger(__name__)

_UID_RE = re.compile(r"^[0-9][0-9.]{0,63}$")
_PART_SUFFIX = ".part"


def safe_component(uid: str) -> str:
    """A path component for a UID: the UID itself when it is dotted digits, else a hash."""
    uid = uid.strip().rstrip("\x00")
    if _UID_RE.match(uid) and ".." not in uid:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:40]


def _nothing() -> None:
    return None


class Spool:
    """Instance files under ``<state_dir>/spool``.

    ``min_free_mb`` is the hard free-space rule: :meth:`ensure_room` refuses bytes that would
    leave less, and the journal takes no new segment that would. ``on_restored`` hears of
    files the journal put back at run time (their write-behind had failed, e.g. disk full).
    ``root`` puts the instance files elsewhere (a cluster's shared storage); the journal stays
    in ``<state_dir>/journal`` on the local disk."""

    def __init__(self, state_dir: str | Path, *, fsync: bool = True, journal: bool = False,
                 min_free_mb: float = 0.0, on_restored: Callable[[list[Path]], None] | None = None,
                 root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else Path(state_dir) / "spool"
        self.fsync = fsync
        self.min_free_mb = min_free_mb
        self.on_restored = on_restored
        self.root.mkdir(parents=True, exist_ok=True)
        self._missing: set[Path] = set()  # journaled files whose write-behind failed, until restored
        self._missing_lock = threading.Lock()
        self.journal = (SpoolJournal(Path(state_dir) / "journal", self.root, space_ok=self.has_room,
                                     restore=self._restore_at_run_time)
                        if fsync and journal else None)

    # --- the free-space rule ------------------------------------------------------------------

    def has_room(self, nbytes: int, min_free_mb: float | None = None) -> bool:
        """Would ``nbytes`` more leave at least ``min_free_mb`` (default: the spool's) free?"""
        mark = self.min_free_mb if min_free_mb is None else min_free_mb
        return self.free_mb() - nbytes / (1024 * 1024) >= mark

    def ensure_room(self, nbytes: int, min_free_mb: float | None = None) -> None:
        """Raise :class:`Refusal` (0xA700) unless ``nbytes`` more leave the mark free."""
        mark = self.min_free_mb if min_free_mb is None else min_free_mb
        free = self.free_mb()
        if free - nbytes / (1024 * 1024) < mark:
            raise Refusal(STATUS_OUT_OF_RESOURCES,
                          f"free disk space must stay at least node.min_free_disk_mb = {mark:g} MiB after "
                          f"writing {nbytes} bytes, got {free:.1f} MiB free in {self.root}")

    def restoring(self, path: Path) -> bool:
        """Is ``path`` a journaled file waiting to be restored (its write failed)?"""
        with self._missing_lock:
            return Path(path) in self._missing

    def missing_files(self) -> int:
        with self._missing_lock:
            return len(self._missing)

    def _restore_at_run_time(self, relative: str, data: bytes) -> bool:
        restored = self._restore(relative, data)
        path = (self.root / relative).resolve()
        with self._missing_lock:
            self._missing.discard(path)
        if restored and self.on_restored is not None:
            try:
                self.on_restored([path])
            except Exception:
                LOG.exception("after restoring %s: the restore hook failed", path)
        return restored

    def open(self) -> int:
        """On start: remove partial files, replay the journal; returns the files restored."""
        swept = self.sweep_partials()
        if swept:
            LOG.info("removed %d partial instance files left by a crash", swept)
        if self.journal is None:
            return 0
        restored = self.journal.recover(self._restore_at_run_time)
        self.journal.start()
        return restored

    def close(self) -> None:
        """On stop: make every journaled file durable and retire the journal's segments."""
        if self.journal is not None:
            self.journal.close()

    def _restore(self, relative: str, data: bytes) -> bool:
        path = (self.root / relative).resolve()
        if self.root.resolve() not in path.parents or not path.name.endswith(".dcm"):
            LOG.error("spool journal names %r, outside the spool; not restored", relative)
            return False
        try:
            if path.stat().st_size == len(data) and path.read_bytes() == data:
                return False
        except FileNotFoundError:
            pass
        self._write_durably(path, [data])
        return True

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance lives (whether or not it is there yet)."""
        return (
            self.root
            / safe_component(study_uid)
            / safe_component(series_uid)
            / (safe_component(sop_instance_uid) + ".dcm")
        )

    def _ensure_dir(self, directory: Path, sync: bool) -> None:
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
            if sync:
                fsync_dir(d.parent)

    def write(self, path: Path, chunks: bytes | memoryview | Sequence[bytes | bytearray | memoryview]) -> int:
        """Write ``chunks`` to ``path`` atomically and durably; returns the bytes written.

        Raises :class:`OSError` (e.g. ``ENOSPC``) after removing the temporary file, so
        nothing partial is left behind.
        """
        size, finish = self.write_behind(path, chunks)
        finish()
        return size

    def write_behind(self, path: Path, chunks: bytes | memoryview | Sequence[bytes | bytearray | memoryview],
                     tail_crc: tuple[int, int] | None = None) -> tuple[int, Callable[[], None]]:
        """Make ``chunks`` durable for ``path`` now; returns their size and a function that
        puts the file in place (a no-op when it is in place already).

        With the journal the bytes are durable in it once this returns, and the file may be
        written a moment later (after the C-STORE response has gone out): a crash in between
        is repaired by the journal's replay on the next start. Without it the file is
        written, durably, before this returns. ``tail_crc``: see :meth:`SpoolJournal.append`."""
        if isinstance(chunks, bytes | bytearray | memoryview):
            chunks = [chunks]
        journal = self.journal
        ticket = (journal.append(str(path.relative_to(self.root)), chunks, tail_crc)
                  if journal is not None else None)
        if ticket is None:
            return self._write_durably(path, chunks), _nothing
        size = sum(memoryview(c).nbytes for c in chunks)

        def finish() -> None:
            ok = False
            try:
                self._write_file(path, chunks, sync=False)
                ok = True
            finally:
                if not ok:
                    with self._missing_lock:
                        self._missing.add(path.resolve())
                journal.release(ticket, ok)

        return size, finish

    def _write_durably(self, path: Path, chunks: Sequence[bytes | bytearray | memoryview]) -> int:
        return self._write_file(path, chunks, sync=self.fsync)

    def _write_file(self, path: Path, chunks: Sequence[bytes | bytearray | memoryview], *, sync: bool) -> int:
        self._ensure_dir(path.parent, sync)
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
                if sync:
                    os.fdatasync(fd)  # data and the size; the rename is made durable below
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if sync:
            fsync_dir(path.parent)
        return size

    def free_mb(self) -> float:
        """Free space on the spool's file system, in MiB (what an unprivileged user may use)."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize / (1024 * 1024)

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
