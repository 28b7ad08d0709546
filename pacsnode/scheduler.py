"""APScheduler wiring: persisted timers and jobs, retries with exponential backoff.

One :class:`Scheduler` owns an APScheduler ``BackgroundScheduler`` whose jobs live in a
SQLAlchemy job store (``<state_dir>/scheduler.sqlite``), so a timer or a queued job
survives a restart. Persisted jobs must name importable callables with picklable
arguments; every persisted job therefore calls the module-level :func:`dispatch` with a
handler *name*, and the running node registers the handler for each name
(:func:`register_handler`). That registry is the one seam between persisted jobs and the
live objects (ledger, spool) they act on.

:class:`JobRunner` runs a queued ledger job: it commits running (one more attempt), calls
the pluggable ``work`` callable, then commits done with the result paths, or handles the
failure by its kind (:func:`failure_kind`, a pure function):

- ``permanent`` — the data can never succeed (a :class:`~pacsnode.errors.VolumeError`:
  geometry, a model input without its series): failed at once with the reason, no retry.
  A later instance of the unit reopens it and its completion queues the job again.
- ``transient`` — anything else: retry at ``backoff_seconds * multiplier ** (n - 1)``
  (capped), failed with the reason once ``max_attempts`` counted attempts are spent.
- ``resource`` — no space for the results (``OSError`` ENOSPC / EDQUOT): retried with the
  same backoff until space returns; such an attempt is not counted, so a full disk never
  dead-letters a job.

Job work must be idempotent: re-running a job replaces its results.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import create_engine, event

from pacsnode.config import SchedulerSettings
from pacsnode.delivery.outbox import backoff_seconds
from pacsnode.errors import LedgerError, VolumeError
from pacsnode.ledger import JobRow, Ledger
from pacsnode.states import JobState

__all__ = [
    "Scheduler",
    "JobRunner",
    "JobWork",
    "FailureKind",
    "failure_kind",
    "RESOURCE_ERRNOS",
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


FailureKind = Literal["permanent", "transient", "resource"]

RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""OSError numbers that mean "no space now": wait for space, never give up."""

_PERMANENT: tuple[type[BaseException], ...] = (VolumeError,)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling (cause first, no cycles)."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and not any(cur is s for s in seen):
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def failure_kind(exc: BaseException) -> FailureKind:
    """What a job failure is: ``permanent`` (bad data: never retried), ``resource`` (no disk
    space: retried without limit) or ``transient`` (retried up to ``max_attempts``).

    The exception's whole chain counts: a ``VolumeError`` or an ENOSPC ``OSError`` wrapped
    in another error is still what it is.
    """
    chain = _chain(exc)
    if any(isinstance(e, OSError) and e.errno in RESOURCE_ERRNOS for e in chain):
        return "resource"
    if any(isinstance(e, _PERMANENT) for e in chain):
        return "permanent"
    return "transient"


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
    ``clock`` gives the time (POSIX seconds) for the ledger and the retry schedule.
    """

    def __init__(
        self,
        ledger: Ledger,
        scheduler: Scheduler,
        settings: SchedulerSettings,
        work: JobWork | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.scheduler = scheduler
        self.settings = settings
        self.work: JobWork = work or _no_work
        self.clock = clock
        # job id → (ledger attempts not counted: they ran out of space, consecutive such failures)
        self._uncounted: dict[int, tuple[int, int]] = {}
        self._uncounted_lock = threading.Lock()

    def submit(self, job_id: int, at: float | None = None) -> None:
        """Schedule a queued job to run at ``at`` (now when None)."""
        self.scheduler.arm(job_timer_id(job_id), self.clock() if at is None else at, JOB_HANDLER, job_id)

    def counted_attempts(self, job: JobRow) -> int:
        """The job's attempts that count towards ``max_attempts`` (not those that found no space)."""
        with self._uncounted_lock:
            uncounted, _ = self._uncounted.get(job.id, (0, 0))
        return max(0, job.attempts - uncounted)

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
        if job.state is JobState.QUEUED:
            self._forget(job_id)  # (re-)queued: attempts start again from 0
        else:
            self._recover_uncounted(job)
        job = self.ledger.start_job(job_id, now=self.clock())
        LOG.info("job %s (unit %s, model %s) attempt %d started", job_id, job.unit_uid,
                 job.model_name, job.attempts)
        try:
            results = self.work(job) or ()
        except Exception as exc:  # the hard boundary: every failure is recorded
            self._failed(job, exc)
        else:
            try:
                self.ledger.finish_job(job_id, results, now=self.clock(), fence=job.starts)
                LOG.info("job %s done (%d results)", job_id, len(results))
            except LedgerError:
                LOG.info("job %s was re-queued or taken over while it ran; its results are superseded", job_id)
            self._forget(job_id)
        finally:
            # A late instance may have re-queued the job while it ran (the scheduler skipped
            # that run because one was in flight): schedule it now.
            if self.ledger.job(job_id).state is JobState.QUEUED:
                self.submit(job_id, self.clock() + 0.5)

    def _forget(self, job_id: int) -> None:
        with self._uncounted_lock:
            self._uncounted.pop(job_id, None)

    def _recover_uncounted(self, job: JobRow) -> None:
        """After a restart the count of attempts that found no space is gone: if the last one
        did, count none of the earlier attempts (never dead-letter for lack of space)."""
        with self._uncounted_lock:
            if job.id not in self._uncounted and (job.last_error or "").startswith(_NO_SPACE):
                self._uncounted[job.id] = (job.attempts, 1)

    def _still_running(self, job: JobRow) -> bool:
        """Whether this attempt still owns the job (a late instance may have re-queued it)."""
        try:
            now = self.ledger.job(job.id)
        except LedgerError:
            return False
        return now.state is JobState.RUNNING and now.generation == job.generation

    def _failed(self, job: JobRow, exc: BaseException) -> None:
        kind = failure_kind(exc)
        error = f"{type(exc).__name__}: {exc}"[:2000]
        now = self.clock()
        try:
            if kind == "resource":
                with self._uncounted_lock:
                    uncounted, streak = self._uncounted.get(job.id, (0, 0))
                    self._uncounted[job.id] = (uncounted + 1, streak + 1)
                delay = backoff_delay(streak + 1, self.settings)
                self.ledger.retry_job(job.id, f"{_NO_SPACE}: {error}"[:2000], now + delay, now=now,
                                      fence=job.starts)
                LOG.error("job %s attempt %d found no space to write its results (%s); not counted as an "
                          "attempt, retry in %.0f s until space is freed", job.id, job.attempts, error, delay)
                self.submit(job.id, now + delay)
                return
            with self._uncounted_lock:  # space is back: the next resource failure backs off from the start
                uncounted, _ = self._uncounted.get(job.id, (0, 0))
                if uncounted:
                    self._uncounted[job.id] = (uncounted, 0)
            counted = self.counted_attempts(job)
            if kind == "permanent" or counted >= self.settings.max_attempts:
                if not self._still_running(job):
                    raise LedgerError(f"job {job.id} is no longer running")
                reason = error if kind == "permanent" else f"{error} (after {counted} attempts)"
                self.ledger.fail_job(job.id, reason, now=now, fence=job.starts)
                self._forget(job.id)
                if kind == "permanent":
                    LOG.error("job %s failed on its data, not retried: %s", job.id, error)
                else:
                    LOG.error("job %s failed after %d attempts: %s", job.id, counted, error)
                return
            delay = backoff_delay(counted, self.settings)
            self.ledger.retry_job(job.id, error, now + delay, now=now, fence=job.starts)
            LOG.warning("job %s attempt %d failed (%s); retry in %.0f s", job.id, counted, error, delay)
            self.submit(job.id, now + delay)
        except LedgerError:
            LOG.info("job %s was re-queued or taken over while it ran; its failure is superseded", job.id)


_NO_SPACE = "no space for results"


def _no_work(job: JobRow) -> Sequence[str]:
    LOG.info("job %s: no job work registered; marked done", job.id)
    return ()
