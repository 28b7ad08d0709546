"""The spool's write-ahead journal: what a crash leaves is replayed, what was retired is not,
torn records are never replayed, and oversize files take the classic durable path."""

from __future__ import annotations

import os
from pathlib import Path

from pacsnode.receive.journal import _BLOCK, SpoolJournal
from pacsnode.receive.spool import Spool

SEGMENT = 1024 * 1024  # small segments keep the tests quick


def _spool(state: Path) -> Spool:
    spool = Spool(state, fsync=True, journal=True)
    assert spool.journal is not None
    spool.journal.segment_bytes = SEGMENT
    spool.journal.max_record = SEGMENT // 4
    return spool


def _crash(spool: Spool) -> None:
    """Stop the journal's checkpoint thread without checkpointing: what a dead process leaves."""
    journal = spool.journal
    assert journal is not None
    with journal._lock:
        journal._closing = True
        journal._changed.notify_all()
    if journal._thread is not None:
        journal._thread.join(timeout=10)


def _blob(i: int, size: int = 20_000) -> bytes:
    return os.urandom(size - 8) + i.to_bytes(8, "little")


def test_files_journaled_but_never_written_are_restored_on_the_next_start(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.open()
    blobs = {spool.path_for("1.2", "1.2.3", f"1.2.3.{i}"): _blob(i) for i in range(70)}  # > 1 segment
    for path, blob in blobs.items():
        size, _finish = spool.write_behind(path, [blob[:100], blob[100:]])  # "crash": files never written
        assert size == len(blob)
    assert not any(p.exists() for p in blobs)
    assert spool.journal is not None and len(spool.journal._sealed) == 1
    _crash(spool)  # no close(): the process died. A new node on the same state dir replays the journal.
    again = _spool(tmp_path)
    assert again.open() == len(blobs)
    assert all(p.read_bytes() == b for p, b in blobs.items())
    again.close()
    # replayed segments were retired: a third start restores nothing
    third = _spool(tmp_path)
    assert third.open() == 0
    third.close()


def test_retired_segments_are_never_replayed(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.open()
    path = spool.path_for("1.2", "1.2.3", "1.2.3.1")
    spool.write(path, _blob(1))
    spool.close()  # checkpoint: the file is durable, the segment gets a new generation
    path.unlink()  # retention removes it later
    again = _spool(tmp_path)
    assert again.open() == 0
    assert not path.exists()
    again.close()


def test_a_torn_record_ends_the_replay_of_its_segment(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.open()
    paths = [spool.path_for("1.2", "1.2.3", f"1.2.3.{i}") for i in range(3)]
    for i, p in enumerate(paths):
        spool.write_behind(p, [_blob(i)])
    journal = spool.journal
    assert journal is not None and journal._active is not None
    segment = journal._active.path
    _crash(spool)
    # tear the second record's payload, as a power cut inside its write would
    first_len = 16 + 4 + 4 + len(str(paths[0].relative_to(spool.root))) + 20_000 + 2
    with open(segment, "r+b") as f:
        f.seek(_BLOCK + first_len + 200)
        f.write(b"\xff" * 16)
    again = _spool(tmp_path)
    assert again.open() == 1
    assert paths[0].exists() and not paths[1].exists() and not paths[2].exists()
    again.close()


def test_a_file_that_could_not_be_written_keeps_its_segment_for_replay(tmp_path: Path) -> None:
    journal = SpoolJournal(tmp_path / "journal", tmp_path, segment_bytes=SEGMENT)
    journal.recover(lambda rel, data: True)
    journal.start()
    ticket = journal.append("a/b/c.dcm", [b"x" * 100])
    assert ticket is not None
    journal.release(ticket, written=False)
    journal.close()
    restored: list[tuple[str, bytes]] = []
    again = SpoolJournal(tmp_path / "journal", tmp_path, segment_bytes=SEGMENT)
    again.recover(lambda rel, data: restored.append((rel, data)) is None)
    assert restored == [("a/b/c.dcm", b"x" * 100)]


def test_files_too_large_for_a_segment_are_made_durable_directly(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    spool.open()
    path = spool.path_for("1.2", "1.2.3", "1.2.3.9")
    big = _blob(9, SEGMENT // 2)
    assert spool.journal is not None and spool.journal.append("x.dcm", [big]) is None
    size, finish = spool.write_behind(path, [big])
    assert size == len(big) and path.read_bytes() == big  # in place before write_behind returned
    finish()
    spool.close()


def test_the_journal_refuses_to_restore_outside_the_spool(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    assert spool._restore("../../evil.dcm", b"x") is False
    assert spool._restore("1.2/1.3/ok.txt", b"x") is False
    assert not (tmp_path.parent / "evil.dcm").exists()
    assert spool._restore("1.2/1.3/ok.dcm", b"abc") is True
    assert spool._restore("1.2/1.3/ok.dcm", b"abc") is False  # identical file: nothing to do
    assert (spool.root / "1.2/1.3/ok.dcm").read_bytes() == b"abc"
