"""The cluster's queue: procrastinate's tables in the ledger's PostgreSQL database.

Every work item is one procrastinate job of the task :data:`TASK`, whose arguments name a
handler of :func:`pacsnode.scheduler.dispatch` and its arguments (as the embedded scheduler's
persisted jobs do). Each item has an id (``stable-<unit>``, ``job-<id>``, ``deliver-<job>-<dest>``,
``probe-<dest>``, ``upkeep``...) used twice:

- as procrastinate's ``queueing_lock``: at most one waiting item per id in the whole cluster, so
  a unit has one idle timer however many receivers took its instances; arming an id that waits
  moves its time (:func:`arm_in`), as the embedded scheduler's ``replace_existing`` does;
- as its ``lock``: at most one item per id runs at a time (one delivery to a destination per job,
  one timer of a unit).

Times are the database's clock (``schedule_at``); callers pass POSIX seconds read from it
(:meth:`PgLedger.db_now`). :class:`ClusterScheduler` gives the node's stages the embedded
:class:`~pacsnode.scheduler.Scheduler` interface over this queue.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

__all__ = ["TASK", "QUEUES", "arm_in", "ensure_queue_schema", "ClusterScheduler", "stable_timer",
           "job_timer", "delivery_timer"]

LOG = logging.getLogger(__name__)

TASK = "pacsnode.dispatch"
CONTROL = "control"
INFERENCE = "inference"
QUEUES = {"default": INFERENCE, "timers": CONTROL}
"""The embedded scheduler's executors → the cluster's queues."""

_MOVE = text(
    "UPDATE procrastinate_jobs SET scheduled_at = CASE WHEN CAST(:at AS float8) IS NULL THEN NULL "
    "ELSE to_timestamp(CAST(:at AS float8)) END, args = CAST(:args AS jsonb) "
    "WHERE queueing_lock = :id AND status = 'todo'")
_DEFER = text(
    "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(:queue, :task, 0, :id, :id, CAST(:args AS jsonb), "
    "CASE WHEN CAST(:at AS float8) IS NULL THEN NULL ELSE to_timestamp(CAST(:at AS float8)) END)"
    "::procrastinate_job_to_defer_v1])")


# the same statements with psycopg's placeholders, for the receive path's plain connection
_MOVE_PSYCOPG = re.sub(r"(?<!:):([a-z]+)", r"%(\1)s", _MOVE.text)
_DEFER_PSYCOPG = re.sub(r"(?<!:):([a-z]+)", r"%(\1)s", _DEFER.text)


def stable_timer(unit_uid: str) -> str:
    return f"stable-{unit_uid}"


def job_timer(job_id: int) -> str:
    return f"job-{job_id}"


def delivery_timer(job_id: int, destination: str) -> str:
    return f"deliver-{job_id}-{destination}"


def _args(item_id: str, handler: str, args: Sequence[Any], every: float | None) -> str:
    return json.dumps({"item": item_id, "handler": handler, "args": list(args), "every": every})


def arm_in(c: Connection, item_id: str, at: float | None, handler: str, args: Sequence[Any], queue: str,
           every: float | None = None) -> None:
    """Inside the transaction ``c``: run ``handler(*args)`` at ``at`` (POSIX seconds; None: now) on
    ``queue``; the item ``item_id`` that waits is moved instead of adding a second one."""
    p = {"id": item_id, "at": at, "args": _args(item_id, handler, args, every), "queue": queue, "task": TASK}
    if c.execute(_MOVE, p).rowcount:
        return
    sp = c.begin_nested()
    try:
        c.execute(_DEFER, p)
        sp.commit()
    except IntegrityError:  # another process armed it between our two statements: move theirs
        sp.rollback()
        c.execute(_MOVE, p)


def arm_in_psycopg(conn: Any, item_id: str, at: float | None, handler: str, args: Sequence[Any], queue: str,
                   every: float | None = None) -> None:
    """:func:`arm_in` on a plain psycopg connection in a transaction (the receive path's)."""
    from psycopg.errors import UniqueViolation

    p = {"id": item_id, "at": at, "args": _args(item_id, handler, args, every), "queue": queue, "task": TASK}
    move, defer = _MOVE_PSYCOPG, _DEFER_PSYCOPG
    if conn.execute(move, p).rowcount:
        return
    try:
        with conn.transaction():  # a savepoint
            conn.execute(defer, p)
    except UniqueViolation:  # another receiver armed it between our two statements: move theirs
        conn.execute(move, p)


def ensure_queue_schema(engine: Engine) -> None:
    """procrastinate's schema, applied once to a database that lacks it (the first process to
    start applies it, under an advisory lock)."""
    from procrastinate.schema import SchemaManager

    with engine.begin() as c:
        c.execute(text("SELECT pg_advisory_xact_lock(2606)"))
        if c.execute(text("SELECT to_regclass('procrastinate_jobs')")).scalar() is None:
            c.exec_driver_sql(SchemaManager.get_schema().replace("%", "%%"))


class ClusterScheduler:
    """The :class:`~pacsnode.scheduler.Scheduler` interface on the cluster's queue. Items run on
    whichever worker takes them (:mod:`pacsnode.cluster.worker`), not in this process."""

    def __init__(self, engine: Engine, settings: Any) -> None:
        self.engine = engine
        self.settings = settings
        self.running = False

    def start(self) -> None:
        self.running = True

    def shutdown(self, wait: bool = True) -> None:
        self.running = False

    def arm(self, job_id: str, run_at: float, handler: str, *args: Any, executor: str = "default") -> None:
        with self.engine.begin() as c:
            arm_in(c, job_id, run_at, handler, args, QUEUES[executor])

    def every(self, job_id: str, seconds: float, handler: str, *args: Any, executor: str = "timers") -> None:
        """A repeating item: it arms its next run (``seconds`` later) each time it runs."""
        with self.engine.begin() as c:
            arm_in(c, job_id, None, handler, args, QUEUES[executor], every=seconds)

    def cancel(self, job_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(text("DELETE FROM procrastinate_jobs WHERE queueing_lock = :id AND status = 'todo'"),
                      {"id": job_id})

    def has(self, job_id: str) -> bool:
        with self.engine.connect() as c:
            return c.execute(text("SELECT 1 FROM procrastinate_jobs WHERE lock = :id AND status IN "
                                  "('todo', 'doing') LIMIT 1"), {"id": job_id}).first() is not None

    def job_ids(self) -> list[str]:
        with self.engine.connect() as c:
            return list(c.execute(text("SELECT DISTINCT lock FROM procrastinate_jobs WHERE status IN "
                                       "('todo', 'doing') ORDER BY lock")).scalars())
