"""The ledger on PostgreSQL: the same :class:`~pacsnode.ledger.Ledger`, shared by every receiver
and worker of a cluster.

Every statement of the embedded ledger is SQLAlchemy Core and runs here unchanged (row locks,
``SELECT ... FOR UPDATE``, make its read-then-write transitions safe between processes; SQLite
ignores them). Three things differ:

- the receive path's one write, :meth:`PgLedger.record_instance`, is fixed SQL for PostgreSQL on
  a psycopg pool of its own; it takes the unit's row lock, so receivers that take instances of
  one study at the same time keep one unit row; its times come from the database clock; while the
  database cannot be reached the instance is refused with 0xA700;
- the unit's idle timer is armed in that same transaction when the instance creates or reopens
  the unit (one timer per unit, :func:`pacsnode.cluster.queue.arm_in_psycopg`);
- a queued job or delivery is enqueued in the transaction that records it (:meth:`_enqueue`).
"""

from __future__ import annotations

import re
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
# The receive path's statements (psycopg placeholders, see _psycopg): they run on a psycopg pool of
# their own, as the embedded ledger's run on a raw sqlite3 connection, because SQLAlchemy's statement
# building and pre-ping cost more than the round trips themselves; psycopg prepares them after a few uses.
_INSERT_INSTANCE = (
    "INSERT INTO instances (sop_instance_uid, sop_class_uid, series_uid, study_uid, unit_uid, path, size, "
    "transfer_syntax, received_at) VALUES (:sop, :cls, :series, :study, :unit, :path, :size, :ts, :now) "
    "ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id")
_INSERT_UNIT = (
    "INSERT INTO units (uid, kind, study_uid, state, generation, instance_count, first_received_at, "
    "last_received_at, updated_at) VALUES (:unit, :kind, :study, 'receiving', 1, :n, :now, :now, :now) "
    "ON CONFLICT (uid) DO NOTHING RETURNING uid")
_LOCK_UNIT = "SELECT state, generation FROM units WHERE uid = :unit FOR UPDATE"
_REOPEN_UNIT = (
    "UPDATE units SET state = 'receiving', generation = :gen, instance_count = instance_count + 1, "
    "reason = NULL, completed_at = NULL, purged_at = NULL, last_received_at = :now, updated_at = :now "
    "WHERE uid = :unit")
_TOUCH_UNIT = (
    "UPDATE units SET instance_count = instance_count + :n, last_received_at = :now, updated_at = :now "
    "WHERE uid = :unit")
_UPSERT_SERIES = (
    "INSERT INTO series (series_uid, study_uid, unit_uid, modality, series_description, body_part, "
    "image_type, sop_class_uid, series_number, instance_count, state, generation, first_received_at, "
    "last_received_at, updated_at) VALUES (:series, :study, :unit, :modality, :descr, :body, :itype, "
    ":cls, :number, 1, 'receiving', :gen, :now, :now, :now) "
    "ON CONFLICT (series_uid) DO UPDATE SET instance_count = series.instance_count + 1, "
    "last_received_at = EXCLUDED.last_received_at, updated_at = EXCLUDED.updated_at, reason = NULL, "
    "state = 'receiving', generation = EXCLUDED.generation")


def _psycopg(sql: str) -> str:
    """``:name`` placeholders as psycopg's ``%(name)s``."""
    return re.sub(r"(?<!:):([a-z]+)", r"%(\1)s", sql)


_SQL = {name: _psycopg(sql) for name, sql in (
    ("instance", _INSERT_INSTANCE), ("unit", _INSERT_UNIT), ("lock", _LOCK_UNIT), ("reopen", _REOPEN_UNIT),
    ("touch", _TOUCH_UNIT), ("series", _UPSERT_SERIES))}


def sqlalchemy_url(dsn: str) -> str:
    """``postgresql://...`` as SQLAlchemy's URL for psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix):]
    raise LedgerError(f"cluster.dsn must be a PostgreSQL URL (postgresql://...), got {dsn!r}")


class PgLedger(Ledger):
    """The ledger in PostgreSQL (``dsn``: ``postgresql://...``). ``stable_seconds``: the idle timer
    that a unit's first (or reopening) instance arms, in the same transaction."""

    def __init__(self, dsn: str, *, stable_seconds: float = 10.0) -> None:  # noqa: D107
        from pacsnode.cluster.queue import ensure_queue_schema

        self.path = Path("postgresql")  # named in messages only
        self.dsn = dsn
        self.stable_seconds = stable_seconds
        self.engine = create_engine(sqlalchemy_url(dsn), pool_pre_ping=True, pool_size=8, max_overflow=16)
        self._write = threading.RLock()  # one writer per process, as embedded (rows locks do the rest)
        self._hot_conn = None
        self._hot_pool: Any = None
        self._hot_lock = threading.Lock()
        ensure_schema(self.engine)
        ensure_queue_schema(self.engine)

    def close(self) -> None:
        if self._hot_pool is not None:
            self._hot_pool.close()
        self.engine.dispose()

    def _hot(self) -> Any:
        """The receive path's psycopg pool (opened on first use; a connection a restarted server
        broke is dropped when it comes back, the instance it carried is refused and resent)."""
        with self._hot_lock:
            if self._hot_pool is None:
                from psycopg_pool import ConnectionPool

                self._hot_pool = ConnectionPool(self.dsn, min_size=1, max_size=8, timeout=10, open=True,
                                                name="pacsnode-receive")
            return self._hot_pool

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
        try:
            with self._hot().connection() as conn:
                row = conn.execute("SELECT path FROM instances WHERE sop_instance_uid = %(sop)s",
                                   {"sop": sop_instance_uid}).fetchone()
        except Exception as exc:
            refused = _unreachable(exc)
            if refused is None:
                raise
            raise refused from exc
        return Path(row[0]) if row is not None else None

    def record_instance(self, rec: InstanceRecord, attrs: SeriesAttributes, *, unit_uid: str,
                        unit_kind: str, now: float | None = None) -> RecordOutcome:
        """As the embedded ledger's, in one PostgreSQL transaction; the unit's timer is armed
        in it when this instance creates or reopens the unit. While PostgreSQL cannot be reached
        the instance is refused with 0xA700 (Out of Resources: the sender tries again later)."""
        try:
            return self._record(rec, attrs, unit_uid=unit_uid, unit_kind=unit_kind, now=now)
        except Exception as exc:
            refused = _unreachable(exc)
            if refused is None:
                raise
            raise refused from exc

    def _record(self, rec: InstanceRecord, attrs: SeriesAttributes, *, unit_uid: str, unit_kind: str,
                now: float | None) -> RecordOutcome:
        from pacsnode.cluster.queue import arm_in_psycopg, stable_timer

        with self._hot().connection() as c:  # one transaction: committed on leaving, else rolled back
            if now is None:
                now = float(c.execute(_NOW).fetchone()[0])
            p = {"sop": rec.sop_instance_uid, "cls": rec.sop_class_uid, "series": rec.series_uid,
                 "study": rec.study_uid, "unit": unit_uid, "path": str(rec.path), "size": rec.size,
                 "ts": rec.transfer_syntax, "now": now, "kind": unit_kind}
            stored = c.execute(_SQL["instance"], p).fetchone() is not None
            created = c.execute(_SQL["unit"], {**p, "n": 1 if stored else 0}).fetchone() is not None
            reopened = False
            generation = 1
            if not created:
                state, generation = c.execute(_SQL["lock"], p).fetchone()
                if stored and state != SeriesState.RECEIVING.value:
                    reopened = True
                    generation += 1
                    c.execute(_SQL["reopen"], {**p, "gen": generation})
                elif stored or state == SeriesState.RECEIVING.value:
                    c.execute(_SQL["touch"], {**p, "n": 1 if stored else 0})
            if stored:
                c.execute(_SQL["series"], {**p, "modality": attrs.modality, "descr": attrs.series_description,
                                           "body": attrs.body_part, "itype": "\\".join(attrs.image_type),
                                           "number": attrs.series_number, "gen": generation})
            if created or reopened:
                arm_in_psycopg(c, stable_timer(unit_uid), now + self.stable_seconds, STABLE_HANDLER,
                               [unit_uid], "control")
        return RecordOutcome(stored, unit_uid, generation, created, reopened)




def _unreachable(exc: Exception) -> Exception | None:
    """A database that does not answer (down, restarting, no free connection) as the receive
    stage's 0xA700 refusal; None for any other error."""
    import psycopg
    from psycopg_pool import PoolTimeout

    if not isinstance(exc, psycopg.OperationalError | PoolTimeout):
        return None
    from pacsnode.receive.validate import STATUS_OUT_OF_RESOURCES, Refusal

    said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return Refusal(STATUS_OUT_OF_RESOURCES, f"the cluster's ledger (PostgreSQL) must answer to record an "
                                            f"instance, got: {said}")
