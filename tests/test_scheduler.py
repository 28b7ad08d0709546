"""Scheduler: persisted jobs; data errors fail at once, transient ones back off then fail, no space waits."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest

from pacsnode.config import SchedulerSettings
from pacsnode.errors import InferenceError, ModelError, ResultsError, VolumeError
from pacsnode.ledger import InstanceRecord, JobRow, Ledger, SeriesAttributes
from pacsnode.scheduler import (
    JOB_HANDLER,
    JobRunner,
    Scheduler,
    backoff_delay,
    failure_kind,
    register_handler,
)
from pacsnode.states import JobState, SeriesState
from pacsnode.volume import select_series


def test_backoff_is_exponential_and_capped() -> None:
    s = SchedulerSettings(backoff_seconds=10, backoff_multiplier=2, max_backoff_seconds=35)
    assert [backoff_delay(a, s) for a in (1, 2, 3, 4)] == [10, 20, 35, 35]
    with pytest.raises(ValueError, match="attempt must be at least 1, got 0"):
        backoff_delay(0, s)


def _queued_job(ledger: Ledger) -> JobRow:
    ledger.record_instance(
        InstanceRecord("1.1", "1.2", "s", "st", Path("/x"), 1, "1.2.840.10008.1.2.1"),
        SeriesAttributes(), unit_uid="s", unit_kind="series")
    ledger.complete_unit("s")
    return ledger.queue_job("s", route="r", model_name="m", model_sha256="0")


def _wait(pred, timeout: float = 20.0) -> None:
    end = time.time() + timeout
    while not pred():
        if time.time() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_failing_job_is_retried_then_failed_with_reason(tmp_path: Path) -> None:
    # end to end through the persisted scheduler; the retry times are pinned in
    # test_transient_failures_record_their_backoff_then_fail (no wall-clock comparisons here)
    settings = SchedulerSettings(max_attempts=3, backoff_seconds=0.05, backoff_multiplier=2)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    sched = Scheduler(tmp_path, settings)
    calls: list[int] = []

    def work(job: JobRow) -> list[str]:
        calls.append(job.attempts)
        raise RuntimeError(f"model missing for job {job.id}")

    runner = JobRunner(ledger, sched, settings, work)
    register_handler(JOB_HANDLER, runner.run)
    sched.start()
    try:
        job = _queued_job(ledger)
        runner.submit(job.id)
        _wait(lambda: ledger.job(job.id).state is JobState.FAILED)
    finally:
        sched.shutdown()
    final = ledger.job(job.id)
    assert final.attempts == 3 and calls == [1, 2, 3]
    assert final.last_error == f"RuntimeError: model missing for job {job.id} (after 3 attempts)"
    assert final.next_attempt_at is None
    assert ledger.unit("s").state is SeriesState.FAILED
    ledger.close()


def test_default_work_marks_done_and_job_survives_restart(tmp_path: Path) -> None:
    settings = SchedulerSettings()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    job = _queued_job(ledger)
    # schedule with a stopped scheduler's store, as a node that crashed would leave it
    first = Scheduler(tmp_path, settings)
    first.start()
    first.aps.pause()
    JobRunner(ledger, first, settings).submit(job.id, time.time() + 0.5)
    first.shutdown(wait=False)
    ran = threading.Event()
    second = Scheduler(tmp_path, settings)
    runner = JobRunner(ledger, second, settings, lambda j: (ran.set(), ["/out/a.dcm"])[1])
    register_handler(JOB_HANDLER, runner.run)
    second.start()
    try:
        _wait(lambda: ledger.job(job.id).state is JobState.DONE)
    finally:
        second.shutdown()
    assert ran.is_set() and ledger.job(job.id).result_paths == ("/out/a.dcm",)
    ledger.close()


# ------------------------------------------------------------------ failure kinds, no threads
# These drive JobRunner.run by hand with a clock the test sets, so every retry time is an
# exact value read back from the ledger.

class _Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class _Arms:
    """The scheduler seam: records what the runner schedules instead of running it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def arm(self, job_id: str, run_at: float, handler: str, *args: object, executor: str = "default") -> None:
        self.calls.append((job_id, run_at))


ENOSPC_ERROR = OSError(errno.ENOSPC, "No space left on device", "/state/results/.1.partial/seg.dcm")


@pytest.mark.parametrize(("exc", "kind"), [
    (VolumeError("a volume needs at least 2 slices, got 1"), "permanent"),
    (InferenceError("wrapped"), "transient"),
    (RuntimeError("onnxruntime session died"), "transient"),
    (ModelError("model file unreadable"), "transient"),
    (OSError(errno.EIO, "Input/output error"), "transient"),
    (ENOSPC_ERROR, "resource"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "resource"),
    (MemoryError(), "transient"),
])
def test_failure_kind(exc: BaseException, kind: str) -> None:
    assert failure_kind(exc) == kind


def test_failure_kind_follows_the_exception_chain() -> None:
    def raised(outer: BaseException, inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException as e:
                raise outer from e
        except BaseException as e:
            return e

    assert failure_kind(raised(ResultsError("SEG could not be saved"), ENOSPC_ERROR)) == "resource"
    assert failure_kind(raised(InferenceError("channel T2"), VolumeError("FoR differs"))) == "permanent"
    assert failure_kind(raised(VolumeError("x"), ENOSPC_ERROR)) == "resource"  # space first: it can pass


def _runner(tmp_path: Path, work, **settings) -> tuple[JobRunner, Ledger, _Clock, _Arms]:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    clock, arms = _Clock(), _Arms()
    s = SchedulerSettings(**{"max_attempts": 3, "backoff_seconds": 10, "backoff_multiplier": 2,
                             "max_backoff_seconds": 300, **settings})
    return JobRunner(ledger, arms, s, work, clock=clock), ledger, clock, arms  # type: ignore[arg-type]


def _run_when_due(runner: JobRunner, ledger: Ledger, clock: _Clock, job_id: int) -> JobRow:
    """One attempt at the time the ledger says it is due; the row after it."""
    due = ledger.job(job_id).next_attempt_at
    if due is not None:
        clock.t = due
    runner.run(job_id)
    return ledger.job(job_id)


def test_transient_failures_record_their_backoff_then_fail(tmp_path: Path) -> None:
    def work(job: JobRow) -> list[str]:
        raise RuntimeError("onnxruntime session died")

    runner, ledger, clock, arms = _runner(tmp_path, work)
    job = _queued_job(ledger)
    t0 = clock.t
    rows = [_run_when_due(runner, ledger, clock, job.id) for _ in range(3)]
    assert [r.state for r in rows] == [JobState.RETRY, JobState.RETRY, JobState.FAILED]
    assert [r.next_attempt_at for r in rows] == [t0 + 10, t0 + 10 + 20, None]
    assert [at for _, at in arms.calls] == [t0 + 10, t0 + 30]  # the scheduler got the same times
    assert rows[-1].attempts == 3
    assert rows[-1].last_error == "RuntimeError: onnxruntime session died (after 3 attempts)"
    assert ledger.unit("s").state is SeriesState.FAILED
    ledger.close()


def _volume_error(job: JobRow) -> list[str]:
    raise VolumeError("a volume needs at least 2 slices, got 1 (instance 1 at [0, 0, 0]); a series of 2 or "
                      "more parallel, equally spaced slices is valid (a single image has no slice spacing)")


class _Channel:
    name, modality, series_description = "FLAIR", "MR", "^FLAIR$"


def _no_series_for_a_channel(job: JobRow) -> list[str]:
    select_series([], [_Channel()])  # what the processor does with a study lacking the FLAIR series
    return []


@pytest.mark.parametrize(("work", "reason"), [
    (_volume_error,
     "VolumeError: a volume needs at least 2 slices, got 1 (instance 1 at [0, 0, 0]); a series of 2 or more "
     "parallel, equally spaced slices is valid (a single image has no slice spacing)"),
    (_no_series_for_a_channel,
     "VolumeError: every model input channel needs a series, got no series for FLAIR (Modality MR, "
     "SeriesDescription matching '^FLAIR$'); series found: none"),
], ids=["geometry", "missing channel"])
def test_data_error_fails_the_job_after_one_attempt(tmp_path: Path, work, reason: str) -> None:
    runner, ledger, clock, arms = _runner(tmp_path, work)
    job = _queued_job(ledger)
    runner.run(job.id)
    final = ledger.job(job.id)
    assert final.state is JobState.FAILED and final.attempts == 1
    assert final.last_error == reason and final.next_attempt_at is None
    unit = ledger.unit("s")
    assert unit.state is SeriesState.FAILED and unit.reason == reason
    assert arms.calls == []  # no retry scheduled
    runner.run(job.id)  # a stray timer does nothing to a failed job
    assert ledger.job(job.id).attempts == 1
    ledger.close()


def test_no_space_is_retried_beyond_max_attempts_until_it_succeeds(tmp_path: Path) -> None:
    outcomes: list[BaseException | None] = [ENOSPC_ERROR] * 7 + [None]

    def work(job: JobRow) -> list[str]:
        exc = outcomes.pop(0)
        if exc is not None:
            raise exc
        return ["/state/results/1/seg.dcm"]

    runner, ledger, clock, arms = _runner(tmp_path, work)
    job = _queued_job(ledger)
    waits = []
    for _ in range(7):  # more than max_attempts (3)
        row = _run_when_due(runner, ledger, clock, job.id)
        assert row.state is JobState.RETRY, row
        assert ledger.unit("s").state is SeriesState.QUEUED
        waits.append(row.next_attempt_at - clock.t)  # clock.t: when this attempt ran
    assert waits == [10, 20, 40, 80, 160, 300, 300]  # the job backoff, capped; never dead-lettered
    assert row.last_error == ("no space for results: OSError: [Errno 28] No space left on device: "
                              "'/state/results/.1.partial/seg.dcm'")
    assert ledger.unit("s").reason == row.last_error
    done = _run_when_due(runner, ledger, clock, job.id)
    assert done.state is JobState.DONE and done.attempts == 8
    assert done.result_paths == ("/state/results/1/seg.dcm",) and done.last_error is None
    assert ledger.unit("s").state is SeriesState.DONE
    ledger.close()


def test_attempts_that_found_no_space_do_not_count_against_max_attempts(tmp_path: Path) -> None:
    outcomes: list[BaseException] = [ENOSPC_ERROR] * 4 + [RuntimeError("flaky")] * 3

    def work(job: JobRow) -> list[str]:
        raise outcomes.pop(0)

    runner, ledger, clock, arms = _runner(tmp_path, work)
    job = _queued_job(ledger)
    rows = [_run_when_due(runner, ledger, clock, job.id) for _ in range(7)]
    assert [r.state for r in rows] == [JobState.RETRY] * 6 + [JobState.FAILED]
    # the transient failures back off from the start once space is back
    assert [rows[k].next_attempt_at - rows[k - 1].next_attempt_at for k in (4, 5)] == [10, 20]
    assert rows[-1].attempts == 7
    assert rows[-1].last_error == "RuntimeError: flaky (after 3 attempts)"
    ledger.close()


def test_a_restarted_runner_does_not_dead_letter_a_job_that_was_waiting_for_space(tmp_path: Path) -> None:
    outcomes: list[BaseException | None] = [ENOSPC_ERROR] * 5 + [RuntimeError("flaky"), None]

    def work(job: JobRow) -> list[str]:
        exc = outcomes.pop(0)
        if exc is not None:
            raise exc
        return []

    runner, ledger, clock, arms = _runner(tmp_path, work)
    job = _queued_job(ledger)
    for _ in range(5):
        _run_when_due(runner, ledger, clock, job.id)
    restarted = JobRunner(ledger, arms, runner.settings, work, clock=clock)  # type: ignore[arg-type]
    row = _run_when_due(restarted, ledger, clock, job.id)
    assert row.state is JobState.RETRY and row.attempts == 6  # 1 counted attempt, not 6
    assert _run_when_due(restarted, ledger, clock, job.id).state is JobState.DONE
    ledger.close()


def test_a_unit_reopened_after_a_data_error_runs_again(tmp_path: Path) -> None:
    broken = [True]

    def work(job: JobRow) -> list[str]:
        if broken[0]:
            _volume_error(job)
        return [f"/state/results/{job.id}/seg.dcm"]

    runner, ledger, clock, arms = _runner(tmp_path, work)
    job = _queued_job(ledger)
    runner.run(job.id)
    assert ledger.job(job.id).state is JobState.FAILED and ledger.unit("s").state is SeriesState.FAILED
    # the missing slice arrives: the unit reopens, completes and is queued again as the node does
    out = ledger.record_instance(
        InstanceRecord("1.2", "1.2", "s", "st", Path("/y"), 1, "1.2.840.10008.1.2.1"),
        SeriesAttributes(), unit_uid="s", unit_kind="series")
    assert out.reopened and out.generation == 2
    assert ledger.unit("s").state is SeriesState.RECEIVING
    assert ledger.complete_unit("s") == 2
    again = ledger.queue_job("s", route="r", model_name="m", model_sha256="0")
    assert again.id == job.id and again.state is JobState.QUEUED and again.attempts == 0
    assert again.generation == 2 and again.last_error is None
    broken[0] = False
    runner.run(job.id)
    final = ledger.job(job.id)
    assert final.state is JobState.DONE and final.attempts == 1
    assert final.result_paths == (f"/state/results/{job.id}/seg.dcm",)
    unit = ledger.unit("s")
    assert unit.state is SeriesState.DONE and unit.reason is None and unit.generation == 2
    ledger.close()
