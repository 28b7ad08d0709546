"""Completeness: one persisted idle timer per unit, fired once, surviving a restart."""

from __future__ import annotations

import time
from pathlib import Path

from pacsnode.config import SchedulerSettings, SeriesSettings
from pacsnode.ledger import InstanceRecord, Ledger, SeriesAttributes
from pacsnode.scheduler import Scheduler, register_handler
from pacsnode.series import STABLE_HANDLER, Completeness, timer_id
from pacsnode.states import SeriesState


def _record(ledger: Ledger, c: Completeness, sop: str) -> None:
    unit, kind = c.unit_of("1.2.3", "1.2.3.4")
    out = ledger.record_instance(
        InstanceRecord(sop, "1.2", "1.2.3.4", "1.2.3", Path(f"/x/{sop}"), 1, "1.2.840.10008.1.2.1"),
        SeriesAttributes(), unit_uid=unit, unit_kind=kind)
    c.instance_recorded(out)


def _wait(pred, timeout: float = 20.0) -> None:
    end = time.time() + timeout
    while not pred():
        assert time.time() < end, "condition not reached in time"
        time.sleep(0.05)


def test_timer_rearmed_by_activity_completes_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    sched = Scheduler(tmp_path, SchedulerSettings())
    fired: list[tuple[str, int]] = []
    c = Completeness(ledger, sched, SeriesSettings(group_by="study", stable_seconds=0.8),
                     lambda u, g: fired.append((u, g)))
    register_handler(STABLE_HANDLER, c.fired)
    sched.start()
    try:
        for i in range(6):  # keeps arriving for ~1.5 s: longer than stable_seconds
            _record(ledger, c, f"1.{i}")
            time.sleep(0.3)
        assert fired == []
        _wait(lambda: fired)
        assert fired == [("1.2.3", 1)]
        assert ledger.unit("1.2.3").state is SeriesState.COMPLETE
        _record(ledger, c, "1.99")  # late instance → reopened, completes again as generation 2
        _wait(lambda: len(fired) == 2)
        assert fired[1] == ("1.2.3", 2)
    finally:
        sched.shutdown()
        ledger.close()


def test_timer_persists_across_restart(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    settings = SeriesSettings(group_by="series", stable_seconds=1.0)
    first = Scheduler(tmp_path, SchedulerSettings())
    c1 = Completeness(ledger, first, settings, lambda u, g: None)
    first.start()
    first.aps.pause()  # the "crash": the timer is stored but never runs here
    _record(ledger, c1, "1.1")
    assert first.has(timer_id("1.2.3.4"))
    first.shutdown(wait=False)

    fired: list[tuple[str, int]] = []
    second = Scheduler(tmp_path, SchedulerSettings())
    c2 = Completeness(ledger, second, settings, lambda u, g: fired.append((u, g)))
    register_handler(STABLE_HANDLER, c2.fired)
    second.start()
    c2.resume()  # re-arms the same id: still one timer
    try:
        _wait(lambda: fired)
        time.sleep(1.5)
        assert fired == [("1.2.3.4", 1)]
        assert not second.has(timer_id("1.2.3.4"))
    finally:
        second.shutdown()
        ledger.close()


def test_a_unit_still_receiving_gets_a_full_quiet_period_after_a_restart(tmp_path: Path) -> None:
    # the node was down for longer than stable_seconds mid-series: the sender could not reach it,
    # so the unit must wait a whole quiet period from the restart for the resend, not complete at once
    ledger = Ledger(tmp_path / "ledger.sqlite")
    settings = SeriesSettings(group_by="series", stable_seconds=1.5)
    out = ledger.record_instance(
        InstanceRecord("1.1", "1.2", "1.2.3.4", "1.2.3", Path("/x/1.1"), 1, "1.2.840.10008.1.2.1"),
        SeriesAttributes(), unit_uid="1.2.3.4", unit_kind="series", now=time.time() - 60)
    assert out.unit_created
    fired: list[tuple[str, int]] = []
    sched = Scheduler(tmp_path, SchedulerSettings())
    c = Completeness(ledger, sched, settings, lambda u, g: fired.append((u, g)))
    register_handler(STABLE_HANDLER, c.fired)
    sched.start()
    started = time.time()
    assert c.resume() == 1
    try:
        time.sleep(0.8)
        assert fired == [] and ledger.unit("1.2.3.4").state is SeriesState.RECEIVING
        _wait(lambda: fired)
        assert fired == [("1.2.3.4", 1)] and time.time() - started >= 1.5
    finally:
        sched.shutdown()
        ledger.close()
