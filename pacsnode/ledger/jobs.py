"""What ran: inference jobs, one per (unit UID, model sha256).

A job is queued for a unit's current generation; a re-run replaces, never duplicates. Its
transitions are checked (:data:`JOB_FROM`) and the unit follows its job while the job is
for the unit's current generation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update

from pacsnode.errors import LedgerError
from pacsnode.ledger.instances import UNIT_FROM, set_unit
from pacsnode.ledger.store import LedgerStore
from pacsnode.ledger.tables import deliveries, jobs, units
from pacsnode.states import DeliveryState, JobState, SeriesState

__all__ = ["JobRow", "JobsMixin", "JOB_FROM"]


@dataclass(frozen=True)
class JobRow:
    id: int
    unit_uid: str
    model_name: str
    model_sha256: str
    route: str
    state: JobState
    generation: int
    attempts: int
    last_error: str | None
    result_paths: tuple[str, ...]
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    starts: int = 0  # every start counted, never reset: the fencing token of the running attempt


def job_row(row: Any) -> JobRow:
    m = dict(row._mapping)
    m["state"] = JobState(m["state"])
    m["result_paths"] = tuple(json.loads(m["result_paths"] or "[]"))
    return JobRow(**m)



JOB_FROM: dict[JobState, frozenset[JobState]] = {
    JobState.RUNNING: frozenset({JobState.QUEUED, JobState.RETRY}),
    JobState.DONE: frozenset({JobState.RUNNING}),
    JobState.RETRY: frozenset({JobState.RUNNING}),
    JobState.FAILED: frozenset({JobState.RUNNING, JobState.QUEUED, JobState.RETRY}),
    JobState.QUEUED: frozenset(JobState),
}


def _lock_job(c: Any, job_id: int) -> Any:
    """The job's row, locked after its unit's row: every transaction that changes both takes
    the unit first (as queue_job does), so two of them never wait for each other in a circle."""
    unit_uid = c.execute(select(jobs.c.unit_uid).where(jobs.c.id == job_id)).scalar()
    if unit_uid is None:
        return None
    c.execute(select(units.c.uid).where(units.c.uid == unit_uid).with_for_update())
    return c.execute(select(jobs).where(jobs.c.id == job_id).with_for_update()).first()


class JobsMixin(LedgerStore):
    """Inference jobs."""

    def queue_job(
        self, unit_uid: str, *, route: str, model_name: str, model_sha256: str,
        now: float | None = None,
    ) -> JobRow:
        """Queue the job keyed (unit UID, model sha256) for the unit's current generation and
        move the unit to queued. A job with the same key is reset, never duplicated."""
        now = time.time() if now is None else now
        with self._tx() as c:
            u = c.execute(select(units.c.state, units.c.generation).where(units.c.uid == unit_uid)
                          .with_for_update()).first()
            if u is None:
                raise LedgerError(f"unit must exist in the ledger, got unknown UID {unit_uid!r}")
            if u.state not in UNIT_FROM[SeriesState.QUEUED]:
                raise LedgerError(
                    f"unit {unit_uid} may be queued only once complete, got state {u.state}"
                )
            c.execute(
                self.upsert(jobs)
                .values(
                    unit_uid=unit_uid, model_name=model_name, model_sha256=model_sha256,
                    route=route, state=JobState.QUEUED.value, generation=u.generation,
                    attempts=0, result_paths="[]", created_at=now, updated_at=now,
                )
                .on_conflict_do_update(
                    index_elements=["unit_uid", "model_sha256"],
                    set_={
                        "state": JobState.QUEUED.value, "generation": u.generation,
                        "attempts": 0, "last_error": None, "next_attempt_at": None,
                        "route": route, "model_name": model_name, "updated_at": now,
                    },
                )
            )
            set_unit(c, unit_uid, SeriesState.QUEUED, now, route=route, reason=None)
            row = job_row(c.execute(
                select(jobs).where(jobs.c.unit_uid == unit_uid, jobs.c.model_sha256 == model_sha256)
            ).one())
            self._enqueue(c, "job", row)
            return row

    def job(self, job_id: int) -> JobRow:
        with self.engine.connect() as c:
            row = c.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise LedgerError(f"job must exist in the ledger, got unknown job id {job_id}")
        return job_row(row)

    def jobs(self, states: Iterable[JobState | str] | None = None) -> list[JobRow]:
        q = select(jobs).order_by(jobs.c.id)
        if states is not None:
            q = q.where(jobs.c.state.in_([JobState(s).value for s in states]))
        with self.engine.connect() as c:
            return [job_row(r) for r in c.execute(q)]

    def _job_transition(
        self, job_id: int, state: JobState, unit_state: SeriesState | None, now: float | None,
        fence: int | None = None, **values: Any,
    ) -> JobRow:
        now = time.time() if now is None else now
        with self._tx() as c:
            row = _lock_job(c, job_id)
            if row is None:
                raise LedgerError(f"job must exist in the ledger, got unknown job id {job_id}")
            if fence is not None and row.starts != fence:
                raise LedgerError(f"job {job_id} must still be held by start {fence} to move to "
                                  f"{state.value}, got start {row.starts} (another worker took it over)")
            if row.state not in {s.value for s in JOB_FROM[state]}:
                valid = ", ".join(sorted(s.value for s in JOB_FROM[state]))
                raise LedgerError(
                    f"job {job_id} may move to {state.value} only from {valid}, got state {row.state}"
                )
            if state is JobState.RUNNING:
                values["attempts"] = row.attempts + 1
                values["starts"] = row.starts + 1
            if state is JobState.QUEUED:
                values.setdefault("attempts", 0)
            c.execute(update(jobs).where(jobs.c.id == job_id).values(state=state.value, updated_at=now, **values))
            if unit_state is not None:
                # The unit follows its job only while the job is for the unit's current
                # generation (a late instance may have reopened it meanwhile).
                u = c.execute(select(units.c.generation, units.c.state).where(units.c.uid == row.unit_uid)).first()
                if u is not None and u.generation == row.generation and u.state != SeriesState.RECEIVING.value:
                    set_unit(c, row.unit_uid, unit_state, now, reason=values.get("last_error"))
            out = job_row(c.execute(select(jobs).where(jobs.c.id == job_id)).one())
            if state in (JobState.QUEUED, JobState.RETRY):
                self._enqueue(c, "job", out)
            return out

    def start_job(self, job_id: int, *, now: float | None = None) -> JobRow:
        """queued | retry → running, one more attempt counted (committed before the work)."""
        return self._job_transition(job_id, JobState.RUNNING, SeriesState.RUNNING, now,
                                    next_attempt_at=None)

    def finish_job(self, job_id: int, result_paths: Sequence[str | Path] = (), *, now: float | None = None,
                   fence: int | None = None) -> JobRow:
        """running → done, with the paths of what it produced. With ``fence`` (the ``starts`` of
        the attempt that finishes) it is refused unless that attempt still holds the job."""
        return self._job_transition(job_id, JobState.DONE, SeriesState.DONE, now, fence,
                                    result_paths=json.dumps([str(p) for p in result_paths]),
                                    last_error=None)

    def retry_job(self, job_id: int, error: str, next_attempt_at: float, *, now: float | None = None,
                  fence: int | None = None) -> JobRow:
        """running → retry: it failed, another attempt is due at ``next_attempt_at``."""
        return self._job_transition(job_id, JobState.RETRY, SeriesState.QUEUED, now, fence,
                                    last_error=error, next_attempt_at=next_attempt_at)

    def fail_job(self, job_id: int, error: str, *, now: float | None = None, fence: int | None = None) -> JobRow:
        """→ failed (dead letter) with the reason."""
        return self._job_transition(job_id, JobState.FAILED, SeriesState.FAILED, now, fence,
                                    last_error=error, next_attempt_at=None)

    def fence_job(self, job_id: int, starts: int, reason: str, *, now: float | None = None) -> JobRow | None:
        """A running job whose holder stopped answering (start ``starts``) → retry, due now.

        One more start is counted, so the old holder's finish (and any delivery it would still
        add) is refused by its fence, and the pending deliveries it added are dropped: the next
        attempt writes its own. Returns None (nothing changed) when the job is no longer held
        by that start."""
        now = time.time() if now is None else now
        with self._tx() as c:
            row = _lock_job(c, job_id)
            if row is None or row.state != JobState.RUNNING.value or row.starts != starts:
                return None
            c.execute(update(jobs).where(jobs.c.id == job_id).values(
                state=JobState.RETRY.value, starts=row.starts + 1, last_error=reason, next_attempt_at=now,
                updated_at=now))
            c.execute(delete(deliveries).where(deliveries.c.job_id == job_id,
                                               deliveries.c.state == DeliveryState.PENDING.value))
            u = c.execute(select(units.c.generation, units.c.state).where(units.c.uid == row.unit_uid)).first()
            if u is not None and u.generation == row.generation and u.state != SeriesState.RECEIVING.value:
                set_unit(c, row.unit_uid, SeriesState.QUEUED, now, reason=reason)
            out = job_row(c.execute(select(jobs).where(jobs.c.id == job_id)).one())
            self._enqueue(c, "job", out)
            return out

    def requeue_job(self, job_id: int, *, now: float | None = None) -> JobRow:
        """any → queued with attempts reset (operator retry, or resume after a crash)."""
        return self._job_transition(job_id, JobState.QUEUED, SeriesState.QUEUED, now,
                                    next_attempt_at=None)
