"""The cluster's queue in the ledger's transactions (real PostgreSQL, tests/pg.py): one idle timer
per unit however many receivers record its instances at once, items that commit or roll back with
the ledger row that caused them, and a timer armed again that moves instead of doubling."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from pacsnode.cluster.ledger import PgLedger
from pacsnode.cluster.queue import ClusterScheduler
from pacsnode.config import SchedulerSettings
from pacsnode.ledger import InstanceRecord, SeriesAttributes

ATTRS = SeriesAttributes("MR", "T1")


def rec(sop: str, unit: str = "1.5") -> InstanceRecord:
    return InstanceRecord(sop, "1.2.840.10008.5.1.4.1.1.4", unit + ".1", unit, Path(f"/spool/{sop}.dcm"), 10,
                          "1.2.840.10008.1.2.1")


def items(led: PgLedger) -> list[tuple[str, str, str]]:
    with led.engine.connect() as c:
        return [tuple(r) for r in c.execute(text(
            "SELECT lock, queue_name, status::text FROM procrastinate_jobs ORDER BY id"))]


@pytest.fixture
def dsn(pg_server) -> str:  # type: ignore[no-untyped-def]
    return pg_server.new_database()


def test_receivers_recording_one_new_unit_at_once_make_one_unit_and_one_timer(dsn: str) -> None:
    receivers = [PgLedger(dsn, stable_seconds=30) for _ in range(4)]
    start = threading.Barrier(len(receivers))
    outcomes = []

    def receive(k: int) -> None:
        start.wait()
        for i in range(10):
            outcomes.append(receivers[k].record_instance(rec(f"1.5.{k}.{i}"), ATTRS, unit_uid="1.5", unit_kind="study"))

    threads = [threading.Thread(target=receive, args=(k,)) for k in range(len(receivers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    led = receivers[0]
    assert sum(o.unit_created for o in outcomes) == 1 and all(o.stored for o in outcomes)
    assert led.unit("1.5").instance_count == 40 and led.instance_count() == 40
    assert items(led) == [("stable-1.5", "control", "todo")]
    (s,) = led.series()
    assert s.instance_count == 40
    for r in receivers:
        r.close()


def test_an_item_commits_and_rolls_back_with_its_ledger_row(dsn: str) -> None:
    led = PgLedger(dsn, stable_seconds=30)
    try:
        with pytest.raises(Exception, match="value too long"):  # a UID longer than the column: refused
            led.record_instance(rec("1.6.1", unit="1.6" + ".9" * 40), ATTRS, unit_uid="1.6" + ".9" * 40,
                                unit_kind="study")
        assert items(led) == [] and led.instance_count() == 0 and led.units() == []
        led.record_instance(rec("1.6.1", unit="1.6"), ATTRS, unit_uid="1.6", unit_kind="study")
        led.complete_unit("1.6")
        job = led.queue_job("1.6", route="r", model_name="m", model_sha256="0")
        assert items(led) == [("stable-1.6", "control", "todo"), (f"job-{job.id}", "inference", "todo")]
        started = led.start_job(job.id)
        led.add_delivery(job.id, "pacs", "/r/seg.dcm", fence=started.starts)
        assert items(led)[-1] == (f"deliver-{job.id}-pacs", "control", "todo")
    finally:
        led.close()


def test_arming_a_waiting_item_again_moves_it(dsn: str) -> None:
    led = PgLedger(dsn)
    sched = ClusterScheduler(led.engine, SchedulerSettings())
    try:
        sched.arm("stable-9", 2_000_000_000.0, "unit-stable", "9", executor="timers")
        sched.arm("stable-9", 2_000_000_100.0, "unit-stable", "9", executor="timers")
        with led.engine.connect() as c:
            rows = c.execute(text("SELECT EXTRACT(EPOCH FROM scheduled_at) FROM procrastinate_jobs")).scalars().all()
        assert [float(x) for x in rows] == [2_000_000_100.0]
        assert sched.has("stable-9") and sched.job_ids() == ["stable-9"]
        sched.cancel("stable-9")
        assert not sched.has("stable-9")
    finally:
        led.close()
