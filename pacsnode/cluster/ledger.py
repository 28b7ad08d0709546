"""The ledger on PostgreSQL: the same :class:`~pacsnode.ledger.Ledger`, shared by every receiver
and worker of a cluster.

Every statement of the embedded ledger is SQLAlchemy Core and runs here unchanged (row locks,
``SELECT ... FOR UPDATE``, make its read-then-write transitions safe between processes; SQLite
ignores them). Three things differ:

- the receive path's one write, :meth:`PgLedger.record_instance`, is fixed SQL for PostgreSQL
  that takes the unit's row lock, so receivers that take instances of one study at the same
  time keep one unit row; its times come from the database clock;
- the unit's idle timer is armed in that same transaction when the instance creates or reopens
  the unit (one timer per unit, :func:`pacsnode.cluster.queue.arm_in`);
- a queued job or delivery is enqueued in the transaction that records it (:meth:`_enqueue`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Table, create_engine, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert

from pacsnode.errors import LedgerError
from pacsnode.ledger import Ledger, RecordOutcome
from pacsnode.ledger.instances import InstanceRecord, SeriesAttributes
from pacsnode.ledger.tables import ensure_schema
from pacsnode.states import JobState, SeriesState

__all__ = ["PgLedger", "sqlalchemy_url"]

JOB_HANDLER = "job"  # pacsnode.scheduler.JOB_HANDLER (not imported: the scheduler imports APScheduler)
STABLE_HANDLER = "unit-stable"  # pacsnode.series.STABLE_HANDLER
DELIVERY_HANDLER = "deliver"  # pacsnode.dispatcher.DELIVERY_HANDLER

_NOW = "SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8"
_INSERT_INSTANCE = text(
    "INSERT INTO instances (sop_instance_uid, sop_class_uid, series_uid, study_uid, unit_uid, path, size, "
    "transfer_syntax, received_at) VALUES (:sop, :cls, :series, :study, :unit, :path, :size, :ts, :now) "
    "ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id")
_INSERT_UNIT = text(
    "INSERT INTO units (uid, kind, study_uid, state, generation, instance_count, first_received_at, "
    "last_received_at, updated_at) VALUES (:unit, :kind, :study, 'receiving', 1, :n, :now, :now, :now) "
    "ON CONFLICT (uid) DO NOTHING RETURNING uid")
_LOCK_UNIT = text("SELECT state, generation FROM units WHERE uid = :unit FOR UPDATE")
_REOPEN_UNIT = text(
    "UPDATE units SET state = 'receiving', generation = :gen, instance_count = instance_count + 1, "
    "reason = NULL, completed_at = NULL, purged_at = NULL, last_received_at = :now, updated_at = :now "
    "WHERE uid = :unit")
_TOUCH_UNIT = text(
    "UPDATE units SET instance_count = instance_count + :n, last_received_at = :now, updated_at = :now "
    "WHERE uid = :unit")
_UPSERT_SERIES = text(
    "INSERT INTO series (series_uid, study_uid, unit_uid, modality, series_description, body_part, "
    "image_type, sop_class_uid, series_number, instance_count, state, generation, first_received_at, "
    "last_received_at, updated_at) VALUES (:series, :study, :unit, :modality, :descr, :body, :itype, "
    ":cls, :number, 1, 'receiving', :gen, :now, :now, :now) "
    "ON CONFLICT (series_uid) DO UPDATE SET instance_count = series.instance_count + 1, "
    "last_received_at = EXCLUDED.last_received_at, updated_at = EXCLUDED.updated_at, reason = NULL, "
    "state = 'receiving', generation = EXCLUDED.generation")


def sqlalchemy_url(dsn: str) -> str:
    """``postgresql://...`` as SQLAlchemy's URL for psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix):]
    raise LedgerError(f"cluster.dsn must be a PostgreSQL URL (postgresql://...), got {dsn!r}")


class PgLedger(Ledger):
    """The ledger in PostgreSQL. ``stable_seconds``: the unit idle timer armed by a first or
    reopening instance; ``queue`` the :class:`~pacsnode.cluster.queue.Queue` items go to."""

    def __init__(self, dsn: str, *, stable_seconds: float = 10.0) -> None:  # noqa: D107
        from pacsnode.cluster.queue import ensure_queue_schema

        self.path = Path("postgresql")  # named in messages only
        self.dsn = dsn
        self.stable_seconds = stable_seconds
        self.engine = create_engine(sqlalchemy_url(dsn), pool_pre_ping=True, pool_size=8, max_overflow=16)
        self._write = threading.RLock()  # one writer per process, as embedded (rows locks do the rest)
        self._hot_conn = None
        ensure_schema(self.engine)
        ensure_queue_schema(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def upsert(self, table: Table) -> Insert:
        return pg_insert(table)

    def db_now(self) -> float:
        with self.engine.connect() as c:
            return float(c.execute(text(_NOW)).scalar_one())

    def _enqueue(self, c: Connection, kind: str, row: Any) -> None:
        from pacsnode.cluster.queue import arm_in, delivery_timer, job_timer

        if kind == "job":
            if row.state in (JobState.QUEUED, JobState.RETRY):
                at = row.next_attempt_at if row.state is JobState.RETRY else None
                arm_in(c, job_timer(row.id), at, JOB_HANDLER, [row.id], "inference")
        elif kind == "delivery":
            arm_in(c, delivery_timer(row.job_id, row.destination), None, DELIVERY_HANDLER,
                   [row.job_id, row.destination], "control")

    # --- the receive path -----------------------------------------------------------------------

    def instance_path(self, sop_instance_uid: str) -> Path | None:
        with self.engine.connect() as c:
            p = c.execute(text("SELECT path FROM instances WHERE sop_instance_uid = :sop"),
                          {"sop": sop_instance_uid}).scalar()
        return Path(p) if p is not None else None

    def record_instance(self, rec: InstanceRecord, attrs: SeriesAttributes, *, unit_uid: str,
                        unit_kind: str, now: float | None = None) -> RecordOutcome:
        """As the embedded ledger's, in one PostgreSQL transaction; the unit's timer is armed
        in it when this instance creates or reopens the unit."""
        from pacsnode.cluster.queue import arm_in, stable_timer

        with self.engine.begin() as c:
            if now is None:
                now = float(c.execute(text(_NOW)).scalar_one())
            p = {"sop": rec.sop_instance_uid, "cls": rec.sop_class_uid, "series": rec.series_uid,
                 "study": rec.study_uid, "unit": unit_uid, "path": str(rec.path), "size": rec.size,
                 "ts": rec.transfer_syntax, "now": now, "kind": unit_kind}
            stored = c.execute(_INSERT_INSTANCE, p).first() is not None
            created = c.execute(_INSERT_UNIT, {**p, "n": 1 if stored else 0}).first() is not None
            reopened = False
            generation = 1
            if not created:
                state, generation = c.execute(_LOCK_UNIT, p).one()
                if stored and state != SeriesState.RECEIVING.value:
                    reopened = True
                    generation += 1
                    c.execute(_REOPEN_UNIT, {**p, "gen": generation})
                elif stored or state == SeriesState.RECEIVING.value:
                    c.execute(_TOUCH_UNIT, {**p, "n": 1 if stored else 0})
            if stored:
                c.execute(_UPSERT_SERIES, {**p, "modality": attrs.modality, "descr": attrs.series_description,
                                           "body": attrs.body_part, "itype": "\\".join(attrs.image_type),
                                           "number": attrs.series_number, "gen": generation})
            if created or reopened:
                arm_in(c, stable_timer(unit_uid), now + self.stable_seconds, STABLE_HANDLER, [unit_uid],
                       "control")
        return RecordOutcome(stored, unit_uid, generation, created, reopened)


