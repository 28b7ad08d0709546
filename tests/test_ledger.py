"""Ledger: one row per SOP instance, units that reopen, jobs keyed (unit, model), deliveries.

The ledger's contract suite: every test runs against the embedded SQLite ledger and the
cluster's PostgreSQL ledger (a real server, tests/pg.py), through the one ``Ledger`` interface.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsnode.errors import LedgerError
from pacsnode.ledger import InstanceRecord, Ledger, SeriesAttributes
from pacsnode.states import DeliveryState, JobState, SeriesState

ATTRS = SeriesAttributes("MR", "T1", "HEAD", ("ORIGINAL",), "1.2.840.10008.5.1.4.1.1.4", 3)


def rec(sop: str, series: str = "1.2.3.1", study: str = "1.2.3") -> InstanceRecord:
    return InstanceRecord(sop, ATTRS.sop_class_uid, series, study, Path(f"/spool/{sop}.dcm"), 10,
                          "1.2.840.10008.1.2.1")


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    if request.param == "sqlite":
        led = Ledger(tmp_path / "ledger.sqlite")
    else:
        from pacsnode.cluster.ledger import PgLedger

        led = PgLedger(request.getfixturevalue("pg_server").new_database())
    yield led
    led.close()


def test_duplicate_sop_instance_is_not_stored_twice(ledger: Ledger) -> None:
    first = ledger.record_instance(rec("1.1"), ATTRS, unit_uid="1.2.3.1", unit_kind="series")
    again = ledger.record_instance(rec("1.1"), ATTRS, unit_uid="1.2.3.1", unit_kind="series")
    assert first.stored and first.unit_created and not again.stored
    assert ledger.instance_count() == 1
    assert ledger.unit("1.2.3.1").instance_count == 1
    assert ledger.instance_path("1.1") == Path("/spool/1.1.dcm")
    (s,) = ledger.series()
    assert (s.modality, s.image_type, s.series_number, s.instance_count) == ("MR", ("ORIGINAL",), 3, 1)


def test_late_instance_reopens_with_new_generation(ledger: Ledger) -> None:
    ledger.record_instance(rec("1.1"), ATTRS, unit_uid="1.2.3", unit_kind="study")
    assert ledger.complete_unit("1.2.3") == 1
    assert ledger.complete_unit("1.2.3") is None  # completing twice is a no-op
    job = ledger.queue_job("1.2.3", route="r", model_name="m", model_sha256="ab" * 32)
    ledger.start_job(job.id)
    ledger.finish_job(job.id, ["/out/seg.dcm"])
    assert ledger.unit("1.2.3").state is SeriesState.DONE
    # a duplicate does not reopen; a new instance does
    assert not ledger.record_instance(rec("1.1"), ATTRS, unit_uid="1.2.3", unit_kind="study").reopened
    out = ledger.record_instance(rec("1.2"), ATTRS, unit_uid="1.2.3", unit_kind="study")
    assert out.reopened and out.generation == 2
    assert ledger.unit("1.2.3").state is SeriesState.RECEIVING
    assert ledger.complete_unit("1.2.3") == 2
    again = ledger.queue_job("1.2.3", route="r", model_name="m", model_sha256="ab" * 32)
    assert again.id == job.id and again.generation == 2 and again.state is JobState.QUEUED
    assert len(ledger.jobs()) == 1  # a re-run replaces, never duplicates


def test_job_retry_then_failed_keeps_reason(ledger: Ledger) -> None:
    ledger.record_instance(rec("1.1"), ATTRS, unit_uid="u", unit_kind="series")
    ledger.complete_unit("u")
    job = ledger.queue_job("u", route="r", model_name="m", model_sha256="00" * 32)
    assert ledger.start_job(job.id).attempts == 1
    ledger.retry_job(job.id, "boom", 123.0)
    assert ledger.unit("u").state is SeriesState.QUEUED
    assert ledger.start_job(job.id).attempts == 2
    failed = ledger.fail_job(job.id, "boom again")
    assert failed.state is JobState.FAILED and failed.last_error == "boom again"
    assert ledger.unit("u").reason == "boom again"
    with pytest.raises(LedgerError, match=r"job \d+ may move to done only from running, got state failed"):
        ledger.finish_job(job.id)
    assert ledger.requeue_job(job.id).attempts == 0


def test_transitions_are_checked(ledger: Ledger) -> None:
    ledger.record_instance(rec("1.1"), ATTRS, unit_uid="u", unit_kind="series")
    with pytest.raises(LedgerError, match="unit u may move to ignored only from complete, got state receiving"):
        ledger.set_unit_state("u", SeriesState.IGNORED)
    with pytest.raises(LedgerError, match="unit u may be queued only once complete, got state receiving"):
        ledger.queue_job("u", route="r", model_name="m", model_sha256="0")
    with pytest.raises(LedgerError, match="unknown UID 'nope'"):
        ledger.unit("nope")


def test_deliveries_pending_sent_failed(ledger: Ledger) -> None:
    ledger.record_instance(rec("1.1"), ATTRS, unit_uid="u", unit_kind="series")
    ledger.complete_unit("u")
    job = ledger.queue_job("u", route="r", model_name="m", model_sha256="0")
    d = ledger.add_delivery(job.id, "pacs", "/out/seg.dcm", now=100.0)
    assert ledger.add_delivery(job.id, "pacs", "/out/seg.dcm", now=100.0).id == d.id
    assert [x.id for x in ledger.deliveries_due(now=100.0)] == [d.id]
    ledger.mark_delivery_retry(d.id, "refused", next_attempt_at=200.0)
    assert ledger.deliveries_due(now=150.0) == []
    assert ledger.mark_delivery_sent(d.id).state is DeliveryState.SENT
    assert ledger.delivery(d.id).attempts == 2
    counts = ledger.counts()
    assert counts["deliveries"] == {"sent": 1} and counts["instances"] == {"total": 1}


def test_fencing_refuses_the_finish_of_a_holder_that_lost_the_job(ledger: Ledger) -> None:
    ledger.record_instance(rec("1.1"), ATTRS, unit_uid="u", unit_kind="series")
    ledger.complete_unit("u")
    job = ledger.queue_job("u", route="r", model_name="m", model_sha256="0")
    first = ledger.start_job(job.id)
    assert (first.attempts, first.starts) == (1, 1)
    ledger.add_delivery(job.id, "pacs", "/out/1/seg.dcm", fence=first.starts)
    # its worker falls silent: another takes the job over
    fenced = ledger.fence_job(job.id, first.starts, "stalled")
    assert fenced is not None and fenced.state is JobState.RETRY and fenced.starts == 2
    assert ledger.deliveries() == []  # the silent holder's pending output is dropped
    assert ledger.fence_job(job.id, first.starts, "stalled") is None  # only once
    second = ledger.start_job(job.id)
    assert (second.attempts, second.starts) == (2, 3)
    with pytest.raises(LedgerError, match=rf"job {job.id} must be running at start 1 to queue its output, "
                                          r"got running at start 3"):
        ledger.add_delivery(job.id, "pacs", "/out/1/seg.dcm", fence=first.starts)
    ledger.add_delivery(job.id, "pacs", "/out/3/seg.dcm", fence=second.starts)
    with pytest.raises(LedgerError, match=rf"job {job.id} must still be held by start 1 to move to done, "
                                          r"got start 3"):
        ledger.finish_job(job.id, ["/out/1/seg.dcm"], fence=first.starts)
    done = ledger.finish_job(job.id, ["/out/3/seg.dcm"], fence=second.starts)
    assert done.state is JobState.DONE and done.result_paths == ("/out/3/seg.dcm",)
    assert [d.dataset_path for d in ledger.deliveries()] == ["/out/3/seg.dcm"]
    assert ledger.unit("u").state is SeriesState.DONE
    assert ledger.requeue_job(job.id).starts == 3  # the fencing token is never reset


def test_units_jobs_and_destinations_read_back_alike(ledger: Ledger) -> None:
    for i in range(3):
        ledger.record_instance(rec(f"2.{i}", series="2.9"), ATTRS, unit_uid="2.9", unit_kind="series", now=10.0 + i)
    u = ledger.unit("2.9")
    assert (u.state, u.instance_count, u.first_received_at, u.last_received_at) == (
        SeriesState.RECEIVING, 3, 10.0, 12.0)
    assert [x.uid for x in ledger.units([SeriesState.RECEIVING])] == ["2.9"]
    assert sorted(str(p) for p in ledger.known_paths()) == [f"/spool/2.{i}.dcm" for i in range(3)]
    assert [p.name for p in ledger.instance_paths("2.9")] == ["2.0.dcm", "2.1.dcm", "2.2.dcm"]
    ledger.complete_unit("2.9", now=20.0)
    ledger.set_unit_state("2.9", SeriesState.IGNORED, reason="no route matches")
    assert ledger.unit("2.9").reason == "no route matches"
    row, changed = ledger.mark_destination("pacs", "down", error="refused", now=5.0)
    assert changed and row.since == 5.0 and ledger.destination("pacs").last_error == "refused"
    _, changed = ledger.mark_destination("pacs", "up", now=6.0)
    assert changed and [d.state.value for d in ledger.destinations()] == ["up"]
    ledger.mark_purged("2.9")
    assert ledger.instance_count() == 0 and ledger.unit("2.9").purged_at is not None
