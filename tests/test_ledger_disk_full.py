"""The ledger on a full disk: a real ENOSPC (a 2 MiB tmpfs) is OSError(ENOSPC), never a
generic SQLite error, and the ledger works again once space is freed."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import mounted_tmpfs

from pacsnode.ledger import InstanceRecord, Ledger, SeriesAttributes
from pacsnode.states import DeliveryState, DestinationState

ATTRS = SeriesAttributes("MR", "T1", "HEAD", ("ORIGINAL",), "1.2.840.10008.5.1.4.1.1.4", 3)


def rec(n: int) -> InstanceRecord:
    return InstanceRecord(f"1.2.3.4.{n}", ATTRS.sop_class_uid, "1.2.3.1", "1.2.3", Path(f"/spool/{n}.dcm"),
                          10, "1.2.840.10008.1.2.1")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "small", "2m") as where:
        yield where


def fill(disk: Path) -> Path:
    """Write a file until the file system is full; returns it (delete it to free the space)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as fh:
        for block in (1 << 16, 1 << 12, 1 << 9):
            try:
                while True:
                    fh.write(b"\0" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def test_full_disk_is_enospc_and_the_ledger_recovers(small_disk: Path) -> None:
    ledger = Ledger(small_disk / "ledger.sqlite")
    try:
        for n in range(5):
            ledger.record_instance(rec(n), ATTRS, unit_uid="1.2.3.1", unit_kind="series")
        ledger.complete_unit("1.2.3.1")
        job = ledger.queue_job("1.2.3.1", route="r", model_name="m", model_sha256="0")
        filler = fill(small_disk)

        # the receive path (raw sqlite3): the first instance that needs a page finds none
        stored, failure = 5, None
        for n in range(5, 500):
            try:
                ledger.record_instance(rec(n), ATTRS, unit_uid="1.2.3.1", unit_kind="series")
                stored += 1
            except OSError as exc:
                failure = exc
                break
        assert failure is not None, "a full disk must stop the ledger from recording"
        assert failure.errno == errno.ENOSPC
        assert str(failure).startswith(f"[Errno 28] the ledger {small_disk / 'ledger.sqlite'} needs space "
                                       f"to commit, got: ")
        assert ledger.instance_count() == stored  # the failed instance left nothing behind

        # the SQLAlchemy write transactions: the same OSError, never a generic error
        for write in (lambda: [ledger.add_delivery(job.id, "pacs", f"/out/{i}.dcm") for i in range(200)],
                      lambda: [ledger.mark_destination(f"pacs{i}", DestinationState.DOWN, error="x" * 2000)
                               for i in range(200)]):
            with pytest.raises(OSError) as caught:
                write()
            assert caught.value.errno == errno.ENOSPC
            assert "needs space to commit" in str(caught.value)

        filler.unlink()  # space is back: the same connection records again
        again = ledger.record_instance(rec(stored), ATTRS, unit_uid="1.2.3.1", unit_kind="series")
        assert again.stored and again.reopened  # the unit had completed: a late instance reopens it
        assert ledger.instance_count() == stored + 1
        assert ledger.unit("1.2.3.1").instance_count == stored + 1
        d = ledger.add_delivery(job.id, "pacs", "/out/after.dcm")
        assert ledger.delivery(d.id).state is DeliveryState.PENDING
        row, changed = ledger.mark_destination("pacs", DestinationState.DOWN, error="refused")
        assert changed and row.state is DestinationState.DOWN
    finally:
        ledger.close()
