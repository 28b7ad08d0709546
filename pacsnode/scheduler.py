"""APScheduler wiring: persisted timers and jobs, retries with exponential backoff.

One :class:`Scheduler` owns an APScheduler ``BackgroundScheduler`` whose jobs live in a
SQLAlchemy job store (``<state_dir>/scheduler.sqlite``), so a timer or a queued job
survives a restart. Persisted jobs must name importable callables with picklable
arguments; every persisted job therefore calls the module-level :func:`dispatch` with a
handler *name*, and the running node registers the handler for each name
(:func:`register_handler`). That registry is the one seam between persisted jobs and the
live objects (ledger, spool) they act on.

:class:`JobRunner` runs a queued ledger job: it commits running (one more attempt), calls
the pluggable ``work`` callable, then commits done with the result paths, or retry with
the next attempt time (``backoff_seconds * multiplier ** (attempt - 1)``, capped), or
failed with the reason once ``max_attempts`` is spent. Job work must be idempotent:
re-running a job replaces its results.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import create_engine, event

from pacsnode.config import SchedulerSettings
from pacsnode.delivery.outbox import backoff_seconds
from pacsnode.errors import LedgerError
from pacsnode.ledger import JobRow, Ledger
from pacsnode.states import JobState

__all__ = [
    "Scheduler",
    "JobRunner",
    "JobWork",
    "backoff_delay",
    "dispatch",
    "register_handler",
    "unregister_handler",
    "JOB_HANDLER",
]

LOG = logging.getLogger(__name__)

JOB_HANDLER = "job"

JobWork = Callable[[JobRow], Sequence[str | Path] | None]
"""What a job does: given the running job's row, produce result paths (or raise)."""

_HANDLERS: dict[str, Callable[..., Any]] = {}
_HANDLERS_LOCK = threading.Lock()


def register_handler(name: str, fn: Callable[..., Any]) -> None:
    """Bind a persisted job name to a live callable (done by the node on start)."""
    with _HANDLERS_LOCK:
        _HANDLERS[name] = fn


def unregister_handler(name: str) -> None:
    with _HANDLERS_LOCK:
        _HANDLERS.pop(name, None)


def dispatch(name: str, *args: Any) -> None:
    """The one function every persisted job calls: look up the handler and run it."""
    with _HANDLERS_LOCK:
        fn = _HANDLERS.get(name)
    if fn is None:
        LOG.error("scheduled job %r has no handler registered; skipped", name)
        return
    fn(*args)


def backoff_delay(attempt: int, settings: SchedulerSettings) -> float:
    """Seconds to wait after the ``attempt``-th failed attempt (1-based), capped."""
    if attempt < 1:
        raise ValueError(f"attempt must be at least 1, got {attempt}")
    return backoff_seconds(attempt, settings)  # jobs and deliveries share one retry policy


def _wal(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Scheduler:
    """A BackgroundScheduler with a persisted SQLite job store and two thread pools:
    ``default`` (jobs: ``workers`` threads) and ``timers`` (completeness timers, upkeep)."""

    def __init__(self, state_dir: str | Path, settings: SchedulerSettings) -> None:
        self.settings = settings
        self.path = Path(state_dir) / "scheduler.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(
            f"sqlite:///{self.path}", connect_args={"check_same_thread": False, "timeout": 30}
        )
        event.listen(self.engine, "connect", _wal)
        self.aps = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.engine)},
            executors={
                "default": ThreadPoolExecutor(settings.workers),
                "timers": ThreadPoolExecutor(2),
            },
            job_defaults={"coalesce": True, "misfire_grace_time": None, "max_instances": 1},
            timezone=UTC,
        )

    def start(self) -> None:
        self.aps.start()

    def shutdown(self, wait: bool = True) -> None:
        if self.aps.running:
            self.aps.shutdown(wait=wait)
        self.engine.dispose()

    def arm(self, job_id: str, run_at: float, handler: str, *args: Any, executor: str = "default") -> None:
        """Run ``handler(*args)`` once at ``run_at`` (epoch seconds); replaces a job of the same id."""
        self.aps.add_job(
            dispatch,
            trigger="date",
            run_date=datetime.fromtimestamp(run_at, tz=UTC),
            args=(handler, *args),
            id=job_id,
            name=f"{handler}:{job_id}",
            replace_existing=True,
            executor=executor,
        )

    def every(self, job_id: str, seconds: float, handler: str, *args: Any, executor: str = "timers") -> None:
        """Run ``handler(*args)`` every ``seconds`` (persisted, replaced on each start)."""
        self.aps.add_job(
            dispatch, trigger="interval", seconds=seconds, args=(handler, *args), id=job_id,
            name=f"{handler}:{job_id}", replace_existing=True, executor=executor,
        )

    def cancel(self, job_id: str) -> None:
        try:
            self.aps.remove_job(job_id)
        except JobLookupError:
            pass

    def has(self, job_id: str) -> bool:
        return self.aps.get_job(job_id) is not None

    def job_ids(self) -> list[str]:
        return [j.id for j in self.aps.get_jobs()]


def job_timer_id(job_id: int) -> str:
    return f"job-{job_id}"


class JobRunner:
    """Runs ledger jobs through a pluggable ``work`` callable with retries and dead letter.

    The default ``work`` does nothing and returns no results, so a queued job simply
    becomes done; the node's inference stage replaces it (``runner.work = fn``).
    """

    def __init__(
        self,
        ledger: Ledger,
        scheduler: Scheduler,
        settings: SchedulerSettings,
        work: JobWork | None = None,
    ) -> None:
        self.ledger = ledger
        self.scheduler = scheduler
        self.settings = settings
        self.work: JobWork = work or _no_work

    def submit(self, job_id: int, at: float | None = None) -> None:
        """Schedule a queued job to run at ``at`` (now when None)."""
        self.scheduler.arm(job_timer_id(job_id), time.time() if at is None else at, JOB_HANDLER, job_id)

    def run(self, job_id: int) -> None:
        """Run one attempt of a job (the persisted job's handler). Idempotent: a job that is
        not queued or due for retry is left alone."""
        try:
            job = self.ledger.job(job_id)
        except LedgerError:
            LOG.warning("job %s is not in the ledger; skipped", job_id)
            return
        if job.state not in (JobState.QUEUED, JobState.RETRY):
            return
        job = self.ledger.start_job(job_id)
        LOG.info("job %s (unit %s, model %s) attempt %d started", job_id, job.unit_uid,
                 job.model_name, job.attempts)
        try:
            results = self.work(job) or ()
        except Exception as exc:  # the hard boundary: every failure is recorded
            self._failed(job, f"{type(exc).__name__}: {exc}")
        else:
            try:
                self.ledger.finish_job(job_id, results)
                LOG.info("job %s done (%d results)", job_id, len(results))
            except LedgerError:
                LOG.info("job %s was re-queued while it ran; its results are superseded", job_id)
        finally:
            # A late instance may have re-queued the job while it ran (the scheduler skipped
            # that run because one was in flight): schedule it now.
            if self.ledger.job(job_id).state is JobState.QUEUED:
                self.submit(job_id, time.time() + 0.5)

    def _failed(self, job: JobRow, error: str) -> None:
        error = error[:2000]
        try:
            if job.attempts >= self.settings.max_attempts:
                self.ledger.fail_job(job.id, f"{error} (after {job.attempts} attempts)")
                LOG.error("job %s failed after %d attempts: %s", job.id, job.attempts, error)
                return
            delay = backoff_delay(job.attempts, self.settings)
            self.ledger.retry_job(job.id, error, time.time() + delay)
            LOG.warning("job %s attempt %d failed (%s); retry in %.0f s", job.id, job.attempts, error, delay)
            self.submit(job.id, time.time() + delay)
        except LedgerError:
            LOG.info("job %s was re-queued while it ran; its failure is superseded", job.id)


def _no_work(job: JobRow) -> Sequence[str]:
    LOG.info("job %s: no job work registered; marked done", job.id)
    return ()
