"""Scheduler: persisted jobs, retries with exponential backoff, then failed with the reason."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pacsnode.config import SchedulerSettings
from pacsnode.ledger import InstanceRecord, JobRow, Ledger, SeriesAttributes
from pacsnode.scheduler import JOB_HANDLER, JobRunner, Scheduler, backoff_delay, register_handler
from pacsnode.states import JobState, SeriesState


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
    settings = SchedulerSettings(max_attempts=3, backoff_seconds=0.2, backoff_multiplier=2)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    sched = Scheduler(tmp_path, settings)
    calls: list[float] = []

    def work(job: JobRow) -> list[str]:
        calls.append(time.time())
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
    assert final.attempts == 3 and len(calls) == 3
    assert final.last_error == f"RuntimeError: model missing for job {job.id} (after 3 attempts)"
    assert ledger.unit("s").state is SeriesState.FAILED
    assert calls[2] - calls[1] >= calls[1] - calls[0] >= 0.2 - 0.05  # backoff grows
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
