"""Completeness: one persisted idle timer per unit, fired once, surviving a restart.

The quiet-period logic is driven by hand (a clock the test sets, the timer handler called
at the time the timer was armed for), so no assertion depends on how fast this machine
runs; the persisted APScheduler timer is exercised for real in the restart test, polled
with deadlines.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pacsnode.config import SchedulerSettings, SeriesSettings
from pacsnode.ledger import InstanceRecord, Ledger, SeriesAttributes
from pacsnode.scheduler import Scheduler, register_handler
from pacsnode.series import STABLE_HANDLER, Completeness, timer_id
from pacsnode.states import SeriesState


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class _Timers:
    """The scheduler seam by hand: one pending date timer per id, as the job store keeps them."""

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}
        self.armed: list[tuple[str, float]] = []

    def arm(self, job_id: str, run_at: float, handler: str, *args: object, executor: str = "default") -> None:
        assert handler == STABLE_HANDLER
        self.pending[job_id] = run_at  # replace_existing: re-arming moves the one timer
        self.armed.append((job_id, run_at))

    def fire(self, job_id: str, clock: _Clock, c: Completeness, unit_uid: str) -> None:
        """The timer fires at the time it was armed for (a date job runs once, then is gone)."""
        clock.t = self.pending.pop(job_id)
        c.fired(unit_uid)


def _record(ledger: Ledger, c: Completeness, sop: str, now: float | None = None) -> None:
    unit, kind = c.unit_of("1.2.3", "1.2.3.4")
    out = ledger.record_instance(
        InstanceRecord(sop, "1.2", "1.2.3.4", "1.2.3", Path(f"/x/{sop}"), 1, "1.2.840.10008.1.2.1"),
        SeriesAttributes(), unit_uid=unit, unit_kind=kind, now=now)
    c.instance_recorded(out, now=now)


def _wait(pred, timeout: float = 20.0) -> None:
    end = time.time() + timeout
    while not pred():
        assert time.time() < end, "condition not reached in time"
        time.sleep(0.05)


def test_timer_rearmed_by_activity_completes_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    t0 = 1_000_000.0
    clock, timers = _Clock(t0), _Timers()
    fired: list[tuple[str, int]] = []
    c = Completeness(ledger, timers, SeriesSettings(group_by="study", stable_seconds=0.8),  # type: ignore[arg-type]
                     lambda u, g: fired.append((u, g)), clock=clock)
    tid = timer_id("1.2.3")
    arrivals = [t0 + 0.3 * i for i in range(6)]  # keeps arriving for 1.5 s: longer than stable_seconds
    # play arrivals and timer firings in time order (an arrival wins a tie)
    sent = 0
    while arrivals or tid in timers.pending:
        if arrivals and (tid not in timers.pending or arrivals[0] <= timers.pending[tid]):
            clock.t = arrivals.pop(0)
            _record(ledger, c, f"1.{sent}", now=clock.t)
            sent += 1
            assert fired == [] and ledger.unit("1.2.3").state is SeriesState.RECEIVING
        else:
            timers.fire(tid, clock, c, "1.2.3")
    # one timer, re-armed from the last activity each time it fired early; complete 0.8 s after the last
    assert [at - t0 for _, at in timers.armed] == pytest.approx([0.8, 0.6 + 0.8, 1.2 + 0.8, 1.5 + 0.8], abs=1e-6)
    assert {i for i, _ in timers.armed} == {tid} and sent == 6
    assert clock.t - t0 == pytest.approx(1.5 + 0.8, abs=1e-6)
    assert fired == [("1.2.3", 1)]
    assert ledger.unit("1.2.3").state is SeriesState.COMPLETE
    c.fired("1.2.3")  # a stray second firing completes nothing
    assert fired == [("1.2.3", 1)]

    clock.t += 10
    _record(ledger, c, "1.99", now=clock.t)  # late instance → reopened, completes again as generation 2
    assert ledger.unit("1.2.3").state is SeriesState.RECEIVING
    assert timers.pending == {tid: clock.t + 0.8}
    timers.fire(tid, clock, c, "1.2.3")
    assert fired == [("1.2.3", 1), ("1.2.3", 2)]
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
    assert second.job_ids() == [timer_id("1.2.3.4")]
    try:
        _wait(lambda: fired)
        # a date timer runs once and leaves the store: once it is gone nothing is left to fire
        _wait(lambda: not second.has(timer_id("1.2.3.4")))
        assert second.job_ids() == []
    finally:
        second.shutdown()  # waits for anything still running
        ledger.close()
    assert fired == [("1.2.3.4", 1)]


def test_a_unit_still_receiving_gets_a_full_quiet_period_after_a_restart(tmp_path: Path) -> None:
    # the node was down for longer than stable_seconds mid-series: the sender could not reach it,
    # so the unit must wait a whole quiet period from the restart for the resend, not complete at once
    ledger = Ledger(tmp_path / "ledger.sqlite")
    settings = SeriesSettings(group_by="series", stable_seconds=1.5)
    started = 1_000_000.0
    out = ledger.record_instance(
        InstanceRecord("1.1", "1.2", "1.2.3.4", "1.2.3", Path("/x/1.1"), 1, "1.2.840.10008.1.2.1"),
        SeriesAttributes(), unit_uid="1.2.3.4", unit_kind="series", now=started - 60)
    assert out.unit_created
    fired: list[tuple[str, int]] = []
    clock, timers = _Clock(started), _Timers()
    c = Completeness(ledger, timers, settings, lambda u, g: fired.append((u, g)), clock=clock)  # type: ignore[arg-type]
    assert c.resume() == 1
    tid = timer_id("1.2.3.4")
    assert timers.pending == {tid: started + 1.5}  # a whole quiet period from the restart

    # a timer left from before the crash fires 0.8 s after the start: too early, re-armed, nothing completes
    timers.pending[tid] = started + 0.8
    timers.fire(tid, clock, c, "1.2.3.4")
    assert fired == [] and ledger.unit("1.2.3.4").state is SeriesState.RECEIVING
    assert timers.pending == {tid: started + 1.5}

    timers.fire(tid, clock, c, "1.2.3.4")
    assert fired == [("1.2.3.4", 1)] and clock.t - started == 1.5
    assert ledger.unit("1.2.3.4").state is SeriesState.COMPLETE
    ledger.close()


def test_a_quiet_unit_with_instance_files_missing_waits_for_them(tmp_path: Path) -> None:
    # a write after Success failed (disk full): the journal restores the file later; until then
    # the unit must not complete, however quiet it is
    ledger = Ledger(tmp_path / "ledger.sqlite")
    settings = SeriesSettings(group_by="series", stable_seconds=2.0)
    missing = {"1.2.3.4": "1 of 1 instance files are not in the spool yet"}
    fired: list[tuple[str, int]] = []
    clock, timers = _Clock(2_000_000.0), _Timers()
    c = Completeness(ledger, timers, settings, lambda u, g: fired.append((u, g)),  # type: ignore[arg-type]
                     not_ready=missing.get, clock=clock)
    _record(ledger, c, "1.1", now=clock.t)
    tid = timer_id("1.2.3.4")
    timers.fire(tid, clock, c, "1.2.3.4")
    assert fired == [] and ledger.unit("1.2.3.4").state is SeriesState.RECEIVING
    assert timers.pending == {tid: clock.t + 2.0}  # checked again a quiet period later
    missing.clear()  # the journal put the file back
    timers.fire(tid, clock, c, "1.2.3.4")
    assert fired == [("1.2.3.4", 1)] and ledger.unit("1.2.3.4").state is SeriesState.COMPLETE
    ledger.close()
