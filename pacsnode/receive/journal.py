"""The spool's write-ahead journal: one data-only flush per received instance.

Making a new file durable the classic way (temp file, ``fdatasync``, rename, directory
``fsync``) costs two file-system journal commits per instance, about 1–1.5 ms on the
test VM's ext4 and more on a loaded one (docs/ingest.md). The journal needs one flush
that commits no metadata at all:

* it is a few preallocated *segment* files whose blocks have been written once (zeros),
  so overwriting them changes neither size nor allocation, and ``fdatasync`` flushes data
  only (0.3–0.45 ms on the same disk);
* each instance is appended as one record (header with lengths, CRC-32s and the spool
  path, then the file's bytes) and flushed before the instance file itself is written, without
  ``fsync``, through the usual temp file and atomic rename;
* a background checkpoint makes the segment's files durable with one ``syncfs`` and then
  retires the segment by giving it a new *generation* in its first block; records of an
  older generation are never replayed;
* on start, :meth:`SpoolJournal.recover` replays every record of the current generation
  whose file is missing or differs (a power cut before the checkpoint), then checkpoints.

A torn record (power cut inside the append) fails its CRC and ends the replay of that
segment: the sender never got Success for it, so nothing acknowledged is lost. Records
larger than a quarter of a segment bypass the journal (:meth:`SpoolJournal.append`
returns None) and are written the classic way by :class:`pacsnode.receive.spool.Spool`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["SpoolJournal", "JournalTicket", "SEGMENT_BYTES", "fsync_dir"]

LOG = logging.getLogger(__name__)

SEGMENT_BYTES = 32 * 1024 * 1024
_BLOCK = 4096
_SEG_MAGIC = b"PNJSEG01"
_REC_MAGIC = b"PNJR"
_SEG_HEADER = struct.Struct("<8sQ")  # magic, generation
# magic, generation, head length, tail length, CRC-32 of path + head, CRC-32 of tail, path length;
# the file's bytes are head + tail (the tail's CRC may come from the caller, computed as it arrived)
_REC_HEADER = struct.Struct("<4sQIIIIH")
_HEADER_CRC = struct.Struct("<I")
_IDLE_CHECKPOINT_S = 2.0  # checkpoint a segment this long after its last append
_SPARES = 1  # segments kept ready (headed, flushed) beyond the active one

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _syncfs(path: Path) -> None:
    """Flush the file system holding ``path`` (Linux ``syncfs``; ``sync`` elsewhere)."""
    fn = getattr(_libc, "syncfs", None)
    if fn is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Segment:
    __slots__ = ("path", "fd", "generation", "offset", "records", "inflight", "last_append", "pinned")

    def __init__(self, path: Path, fd: int, generation: int) -> None:
        self.path = path
        self.fd = fd
        self.generation = generation
        self.offset = _BLOCK
        self.records = 0
        self.inflight = 0
        self.last_append = 0.0
        self.pinned = False  # a file of it could not be written: only the next start's replay retires it


class JournalTicket:
    """An appended record whose instance file is being written; hand it back with
    :meth:`SpoolJournal.release` once the file is in place (or its write failed)."""

    __slots__ = ("segment",)

    def __init__(self, segment: _Segment) -> None:
        self.segment = segment


class SpoolJournal:
    """Segments under ``directory``; :meth:`append` is thread-safe."""

    def __init__(self, directory: str | Path, fs_root: str | Path, *,
                 segment_bytes: int = SEGMENT_BYTES, space_ok: Callable[[int], bool] | None = None,
                 restore: Callable[[str, bytes], bool] | None = None) -> None:
        """``space_ok(nbytes)``: may a new segment of ``nbytes`` be allocated (the free-space
        rule)? ``restore``: puts back a file whose write-behind failed, at run time."""
        self.space_ok = space_ok or (lambda _n: True)
        self.restore = restore
        self.dir = Path(directory)
        self.fs_root = Path(fs_root)  # a folder on the spool's file system, for syncfs
        self.segment_bytes = max(segment_bytes, 16 * _BLOCK)
        self.max_record = self.segment_bytes // 4
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._active: _Segment | None = None
        self._spares: deque[_Segment] = deque()
        self._sealed: list[_Segment] = []
        self._generation = 0
        self._gen_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.dir.mkdir(parents=True, exist_ok=True)

    # --- segments -------------------------------------------------------------------------------

    def _segment_files(self) -> list[Path]:
        return sorted(self.dir.glob("segment-*.log"))

    @staticmethod
    def _read_generation(fd: int) -> int | None:
        magic, generation = _SEG_HEADER.unpack(os.pread(fd, _SEG_HEADER.size, 0).ljust(_SEG_HEADER.size, b"\0"))
        return generation if magic == _SEG_MAGIC else None

    def _head(self, fd: int) -> int:
        """Give a segment the next generation, durably: its old records are void from now on."""
        with self._gen_lock:
            self._generation += 1
            generation = self._generation
        os.pwrite(fd, _SEG_HEADER.pack(_SEG_MAGIC, generation).ljust(_BLOCK, b"\0"), 0)
        os.fdatasync(fd)
        return generation

    def _new_segment(self) -> _Segment:
        """A new segment file, every block written once so later appends change no metadata."""
        n = len(self._segment_files())
        path = self.dir / f"segment-{n:04d}.log"
        while path.exists():
            n += 1
            path = self.dir / f"segment-{n:04d}.log"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            zeros = bytes(1024 * 1024)
            for off in range(0, self.segment_bytes, len(zeros)):
                os.pwrite(fd, zeros[:self.segment_bytes - off], off)
            os.fsync(fd)
            fsync_dir(self.dir)
            generation = self._head(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return _Segment(path, fd, generation)

    # --- recovery -------------------------------------------------------------------------------

    def recover(self, restore: Callable[[str, bytes], bool]) -> int:
        """Replay the records of every segment's current generation, oldest generation first.

        ``restore(relative_path, file_bytes)`` puts a file back when it is missing or
        differs, durably, and says whether it did. Afterwards every segment is checkpointed
        and retired. Returns how many files were restored."""
        segments: list[tuple[int, Path, int]] = []
        for path in self._segment_files():
            fd = os.open(path, os.O_RDWR)
            generation = self._read_generation(fd)
            if generation is None:  # never headed: created by a run that crashed while zero-filling
                os.close(fd)
                LOG.warning("spool journal: %s was never completed; removed", path.name)
                path.unlink()
                continue
            segments.append((generation, path, fd))
        segments.sort()
        restored = 0
        for generation, _path, fd in segments:
            self._generation = max(self._generation, generation)
            for rel, payload in self._records(fd, generation, os.fstat(fd).st_size):
                if restore(rel, payload):
                    restored += 1
        if segments:
            _syncfs(self.fs_root)
        for _generation, path, fd in segments:
            if os.fstat(fd).st_size != self.segment_bytes:  # another segment size configured
                os.close(fd)
                path.unlink()
                continue
            self._spares.append(_Segment(path, fd, self._head(fd)))
        if restored:
            LOG.warning("spool journal: restored %d instance files a crash had not made durable", restored)
        return restored

    def _records(self, fd: int, generation: int, size: int) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        offset = _BLOCK
        head_size = _REC_HEADER.size + _HEADER_CRC.size
        while offset + head_size <= size:
            head = os.pread(fd, head_size, offset)
            magic, gen, head_len, tail_len, crc, tail_crc, path_len = _REC_HEADER.unpack_from(head)
            (header_crc,) = _HEADER_CRC.unpack_from(head, _REC_HEADER.size)
            if magic != _REC_MAGIC or gen != generation or zlib.crc32(head[:_REC_HEADER.size]) != header_crc:
                break
            end = offset + head_size + path_len + head_len + tail_len
            if end > size:
                break
            body = os.pread(fd, path_len + head_len + tail_len, offset + head_size)
            split = path_len + head_len
            if zlib.crc32(memoryview(body)[:split]) != crc or zlib.crc32(memoryview(body)[split:]) != tail_crc:
                LOG.warning("spool journal: torn record at offset %d (never acknowledged); replay of "
                            "this segment stops there", offset)
                break
            rel = body[:path_len].decode("utf-8")
            out.append((rel, body[path_len:]))
            offset = end
        return out

    # --- appending ------------------------------------------------------------------------------

    def start(self) -> None:
        """Prepare the first segments and start the checkpoint thread."""
        with self._lock:
            if not self._spares:
                self._spares.append(self._new_segment())  # the spare comes from the checkpoint thread
        self._thread = threading.Thread(target=self._checkpoint_loop, name="spool-journal", daemon=True)
        self._thread.start()

    def append(self, relative_path: str, chunks: Sequence[bytes | bytearray | memoryview],
               tail_crc: tuple[int, int] | None = None) -> JournalTicket | None:
        """Make one file's bytes (``chunks``, in order) durable in the journal; None when the
        record is too large for a segment (the caller then makes the file itself durable).

        ``tail_crc = (i, crc)``: the caller already has the CRC-32 of ``chunks[i:]`` (the
        fast data phase computes it per PDU as the data set arrives)."""
        rel = relative_path.encode("utf-8")
        split, known = tail_crc if tail_crc is not None else (len(chunks), 0)
        head_len = sum(memoryview(c).nbytes for c in chunks[:split])
        tail_len = sum(memoryview(c).nbytes for c in chunks[split:])
        size = _REC_HEADER.size + _HEADER_CRC.size + len(rel) + head_len + tail_len
        if size > self.max_record:
            return None
        crc = zlib.crc32(rel)
        for c in chunks[:split]:
            crc = zlib.crc32(c, crc)
        with self._lock:
            seg = self._active
            if seg is None or seg.offset + size > self.segment_bytes:
                if not self._spares and not self.space_ok(self.segment_bytes):
                    return None  # no segment within the free-space rule: the caller fsyncs the file
                if seg is not None:
                    self._sealed.append(seg)
                seg = self._active = self._spares.popleft() if self._spares else self._new_segment()
                self._changed.notify_all()
            head = _REC_HEADER.pack(_REC_MAGIC, seg.generation, head_len, tail_len, crc, known, len(rel))
            offset = seg.offset
            os.pwritev(seg.fd, [head, _HEADER_CRC.pack(zlib.crc32(head)), rel, *chunks], offset)
            os.fdatasync(seg.fd)
            seg.offset = offset + size
            seg.records += 1
            seg.inflight += 1
            seg.last_append = time.monotonic()
            return JournalTicket(seg)

    def release(self, ticket: JournalTicket, written: bool = True) -> None:
        """The record's file is in place (``written``) or could not be written: then the
        segment is kept, unretired, for the next start's replay."""
        with self._lock:
            if not written:
                ticket.segment.pinned = True
                LOG.error("spool journal: an instance file could not be written; its journal "
                          "segment %s is kept for replay on the next start", ticket.segment.path.name)
            ticket.segment.inflight -= 1
            # a sealed segment is due for its checkpoint now; the active one only once idle, which
            # the checkpoint thread's 0.5 s wait sees without a wake-up (and a thread switch) per instance
            if ticket.segment.inflight == 0 and (ticket.segment is not self._active or not written):
                self._changed.notify_all()

    # --- checkpoints ----------------------------------------------------------------------------

    def _due(self) -> list[_Segment]:
        """Segments to checkpoint now (called with the lock held)."""
        seg = self._active
        if (seg is not None and seg.records and seg.inflight == 0
                and (self._closing or time.monotonic() - seg.last_append > _IDLE_CHECKPOINT_S)):
            self._sealed.append(seg)
            self._active = None
        due = [s for s in self._sealed if s.inflight == 0 and not s.pinned]
        self._sealed = [s for s in self._sealed if s.inflight != 0 or s.pinned]
        return due

    def restore_pinned(self) -> int:
        """Put back the files of pinned segments (a write-behind failed, e.g. disk full) and
        unpin a segment once all its files are in place; returns the files restored. Runs in
        the checkpoint thread every 0.5 s while any segment is pinned."""
        if self.restore is None:
            return 0
        with self._lock:
            pinned = [s for s in self._sealed if s.pinned and s.inflight == 0]
        restored = 0
        for seg in pinned:
            try:
                for rel, payload in self._records(seg.fd, seg.generation, seg.offset):
                    restored += self.restore(rel, payload)
            except OSError as exc:
                LOG.debug("spool journal: %s still cannot be restored: %s", seg.path.name, exc)
                continue
            with self._lock:
                seg.pinned = False
            LOG.warning("spool journal: the files of %s are in place again; segment released", seg.path.name)
        return restored

    def checkpoint(self) -> int:
        """Make the files of finished segments durable and retire the segments; returns how many."""
        with self._lock:
            due = self._due()
        if not due:
            return 0
        _syncfs(self.fs_root)
        with self._lock:
            for seg in due:  # _due() took only segments with nothing in flight
                seg.generation, seg.offset, seg.records = self._head(seg.fd), _BLOCK, 0
                self._spares.append(seg)
        return len(due)

    def _checkpoint_loop(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                self._changed.wait(0.5)
            try:
                self.restore_pinned()
                self.checkpoint()
                with self._lock:
                    short = len(self._spares) < _SPARES + (self._active is None) and not self._closing
                if short and self.space_ok(2 * self.segment_bytes):  # a spare never takes the last room
                    seg = self._new_segment()
                    with self._lock:
                        self._spares.append(seg)
            except OSError:
                LOG.exception("spool journal checkpoint failed; will retry")
                time.sleep(1.0)

    def close(self) -> None:
        """Checkpoint everything (waiting for files being written) and close the segments."""
        with self._lock:
            self._closing = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        deadline = time.monotonic() + 10
        while True:
            self.checkpoint()
            with self._lock:
                left = ([s for s in self._sealed if not s.pinned]
                        or (self._active is not None and self._active.records and not self._active.pinned))
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        with self._lock:
            segs = list(self._spares) + self._sealed + ([self._active] if self._active else [])
            self._spares.clear()
            self._sealed = []
            self._active = None
        for seg in segs:
            os.close(seg.fd)
