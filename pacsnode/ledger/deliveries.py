"""What was delivered: one row per (job, destination, result file).

pending → sent | failed. A failed attempt keeps the row pending with its error and the
time of its next attempt; ``failing_since`` is when it first failed (or was first held back
because its destination was down), and the delivery policy's horizon counts from it. A
dead-lettered row (failed) says why in ``last_error``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from pacsnode.errors import LedgerError
from pacsnode.ledger.store import LedgerStore
from pacsnode.ledger.tables import deliveries, jobs
from pacsnode.states import DeliveryState, JobState

__all__ = ["DeliveryRow", "DeliveriesMixin"]


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    job_id: int
    destination: str
    dataset_path: str
    state: DeliveryState
    attempts: int
    last_error: str | None
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    failing_since: float | None = None


def delivery_row(row: Any) -> DeliveryRow:
    m = dict(row._mapping)
    m["state"] = DeliveryState(m["state"])
    return DeliveryRow(**m)


class DeliveriesMixin(LedgerStore):
    """The outbox."""

    def add_delivery(self, job_id: int, destination: str, dataset_path: str | Path,
                     *, now: float | None = None, fence: int | None = None) -> DeliveryRow:
        """A pending delivery (idempotent: the same job, destination and file is one row,
        reset to pending with its attempts and failure history cleared). With ``fence`` (the
        ``starts`` of the attempt that made the file) it is refused unless that attempt still
        holds the running job: a worker that lost its job never queues its output."""
        now = time.time() if now is None else now
        with self._tx() as c:
            if fence is not None:
                j = c.execute(select(jobs.c.state, jobs.c.starts).where(jobs.c.id == job_id)
                              .with_for_update()).first()
                if j is None or j.state != JobState.RUNNING.value or j.starts != fence:
                    got = "no such job" if j is None else f"{j.state} at start {j.starts}"
                    raise LedgerError(f"job {job_id} must be running at start {fence} to queue its output, "
                                      f"got {got} (another worker took it over)")
            c.execute(
                self.upsert(deliveries)
                .values(job_id=job_id, destination=destination, dataset_path=str(dataset_path),
                        state=DeliveryState.PENDING.value, attempts=0, next_attempt_at=now,
                        created_at=now, updated_at=now)
                .on_conflict_do_update(
                    index_elements=["job_id", "destination", "dataset_path"],
                    set_={"state": DeliveryState.PENDING.value, "attempts": 0, "last_error": None,
                          "next_attempt_at": now, "updated_at": now, "failing_since": None},
                )
            )
            row = delivery_row(c.execute(select(deliveries).where(
                deliveries.c.job_id == job_id, deliveries.c.destination == destination,
                deliveries.c.dataset_path == str(dataset_path))).one())
            self._enqueue(c, "delivery", row)
            return row

    def delivery(self, delivery_id: int) -> DeliveryRow:
        with self.engine.connect() as c:
            row = c.execute(select(deliveries).where(deliveries.c.id == delivery_id)).first()
        if row is None:
            raise LedgerError(f"delivery must exist in the ledger, got unknown id {delivery_id}")
        return delivery_row(row)

    def deliveries(self, states: Iterable[DeliveryState | str] | None = None,
                   job_id: int | None = None, destination: str | None = None) -> list[DeliveryRow]:
        q = select(deliveries).order_by(deliveries.c.id)
        if states is not None:
            q = q.where(deliveries.c.state.in_([DeliveryState(s).value for s in states]))
        if job_id is not None:
            q = q.where(deliveries.c.job_id == job_id)
        if destination is not None:
            q = q.where(deliveries.c.destination == destination)
        with self.engine.connect() as c:
            return [delivery_row(r) for r in c.execute(q)]

    def deliveries_due(self, now: float | None = None) -> list[DeliveryRow]:
        """Pending deliveries whose next attempt time has come."""
        now = time.time() if now is None else now
        q = select(deliveries).where(
            deliveries.c.state == DeliveryState.PENDING.value,
            (deliveries.c.next_attempt_at.is_(None)) | (deliveries.c.next_attempt_at <= now),
        ).order_by(deliveries.c.id)
        with self.engine.connect() as c:
            return [delivery_row(r) for r in c.execute(q)]

    def _delivery_update(self, delivery_id: int, now: float | None, **values: Any) -> DeliveryRow:
        now = time.time() if now is None else now
        with self._tx() as c:
            res = c.execute(update(deliveries).where(deliveries.c.id == delivery_id)
                            .values(updated_at=now, **values))
            if res.rowcount != 1:
                raise LedgerError(f"delivery must exist in the ledger, got unknown id {delivery_id}")
            return delivery_row(c.execute(select(deliveries).where(deliveries.c.id == delivery_id)).one())

    @staticmethod
    def _failing_since(now: float | None) -> Any:
        """``failing_since`` kept once set, else the time of this failure."""
        return func.coalesce(deliveries.c.failing_since, time.time() if now is None else now)

    def mark_delivery_sent(self, delivery_id: int, *, now: float | None = None) -> DeliveryRow:
        return self._delivery_update(delivery_id, now, state=DeliveryState.SENT.value,
                                     attempts=deliveries.c.attempts + 1, last_error=None,
                                     next_attempt_at=None)

    def mark_delivery_retry(self, delivery_id: int, error: str, next_attempt_at: float,
                            *, now: float | None = None) -> DeliveryRow:
        """An attempt failed; stays pending until ``next_attempt_at``."""
        return self._delivery_update(delivery_id, now, state=DeliveryState.PENDING.value,
                                     attempts=deliveries.c.attempts + 1, last_error=error,
                                     next_attempt_at=next_attempt_at,
                                     failing_since=self._failing_since(now))

    def mark_delivery_held(self, delivery_id: int, reason: str, *, now: float | None = None) -> DeliveryRow:
        """Not attempted because its destination is down: stays pending, no attempt counted,
        no time of its own for the next attempt (it goes when the destination answers)."""
        return self._delivery_update(delivery_id, now, state=DeliveryState.PENDING.value,
                                     last_error=reason, next_attempt_at=None,
                                     failing_since=self._failing_since(now))

    def mark_delivery_failed(self, delivery_id: int, error: str, *, attempted: bool = True,
                             now: float | None = None) -> DeliveryRow:
        """Dead letter with the reason (``attempted``: an attempt just failed and counts)."""
        extra: dict[str, Any] = {"attempts": deliveries.c.attempts + 1} if attempted else {}
        return self._delivery_update(delivery_id, now, state=DeliveryState.FAILED.value,
                                     last_error=error, next_attempt_at=None,
                                     failing_since=self._failing_since(now), **extra)

    def make_deliveries_due(self, destination: str, *, now: float | None = None) -> list[DeliveryRow]:
        """Every pending delivery to ``destination`` is due now (it answers again)."""
        now = time.time() if now is None else now
        with self._tx() as c:
            c.execute(update(deliveries).where(
                deliveries.c.destination == destination,
                deliveries.c.state == DeliveryState.PENDING.value,
            ).values(next_attempt_at=now, updated_at=now))
            rows = c.execute(select(deliveries).where(
                deliveries.c.destination == destination,
                deliveries.c.state == DeliveryState.PENDING.value,
            ).order_by(deliveries.c.id))
            return [delivery_row(r) for r in rows]
