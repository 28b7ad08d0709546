"""The ledger's connections and write transactions, and what a full disk becomes.

:class:`LedgerStore` owns the SQLAlchemy engine (WAL, ``synchronous=NORMAL``), the raw
sqlite3 connection of the receive path and the process-wide writer lock; the record
modules (:mod:`.instances`, :mod:`.jobs`, :mod:`.deliveries`, :mod:`.destinations`) are
mixins over it.

A full disk is one error, whatever layer met it: SQLite's ``SQLITE_FULL`` ("database or
disk is full"), and a disk I/O error while the ledger's file system has (next to) no space
left, become ``OSError(errno.ENOSPC, ...)`` (:func:`disk_full_error`). The receiver answers
that with 0xA700 (Out of Resources) and the scheduler waits for space instead of failing.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Table, create_engine, event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.dml import Insert

from pacsnode.ledger.tables import ensure_schema

__all__ = ["LedgerStore", "disk_full_error", "LOW_SPACE_BYTES"]

LOG = logging.getLogger(__name__)

SQLITE_IOERR = 10
SQLITE_FULL = 13
LOW_SPACE_BYTES = 1 << 20
"""A disk I/O error with less than this free on the ledger's file system is a full disk."""


def _free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, the DB-API error SQLAlchemy wrapped (``.orig``) and their causes, no cycles."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or any(cur is seen for seen in out):
            continue
        out.append(cur)
        todo += [getattr(cur, "orig", None), cur.__cause__, cur.__context__]
    return out


def disk_full_error(exc: BaseException, path: Path) -> OSError | None:
    """``OSError(ENOSPC)`` when ``exc`` means the ledger at ``path`` found no space, else None."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e
        if not isinstance(e, sqlite3.Error):
            continue
        code = getattr(e, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        message = str(e)
        if primary == SQLITE_FULL or "database or disk is full" in message.lower():
            return OSError(errno.ENOSPC, f"the ledger {path} needs space to commit, got: {message}")
        if primary == SQLITE_IOERR or "disk i/o error" in message.lower():
            free = _free_bytes(path)
            if free is not None and free < LOW_SPACE_BYTES:
                return OSError(errno.ENOSPC, f"the ledger {path} needs space to commit, got: {message} "
                                             f"with {free} bytes free")
    return None


def set_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class LedgerStore:
    """The engine, the receive path's connection and the writer lock.

    A backend for another database (:class:`pacsnode.cluster.PgLedger`) sets its own engine and
    overrides :meth:`upsert`, :meth:`_enqueue` and the receive path's two methods; every other
    statement is SQLAlchemy Core and runs on either.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(
            f"sqlite:///{self.path}",
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        event.listen(self.engine, "connect", set_pragmas)
        self._write = threading.RLock()
        self._hot_conn: sqlite3.Connection | None = None
        ensure_schema(self.engine)

    def close(self) -> None:
        with self._write:
            if self._hot_conn is not None:
                self._hot_conn.close()
                self._hot_conn = None
        self.engine.dispose()

    def _tx(self) -> _Tx:
        return _Tx(self)

    def upsert(self, table: Table) -> Insert:
        """An INSERT that supports ``on_conflict_do_update`` in this database's dialect."""
        return sqlite_insert(table)

    def _enqueue(self, c: Connection, kind: str, row: Any) -> None:
        """Called inside the transaction that queued a job (``kind`` "job") or a delivery
        ("delivery"): a cluster backend enqueues its work item here, in the same transaction.
        The embedded ledger has no queue of its own (the scheduler is told after the commit)."""

    def db_now(self) -> float:
        """The ledger's clock (POSIX seconds): this machine's for SQLite, the server's for PostgreSQL."""
        import time

        return time.time()

    def _hot(self) -> sqlite3.Connection:
        """The ingest connection: plain sqlite3 with prepared SQL, used under the writer lock.

        Recording an instance is the one statement group on the receive path; SQLAlchemy's
        statement building costs more than SQLite itself there (about 5 ms against 0.3 ms per
        instance on a 2-CPU machine), so it runs as fixed SQL on a dedicated connection.
        """
        if self._hot_conn is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            set_pragmas(conn, None)
            self._hot_conn = conn
        return self._hot_conn

    def _hot_rollback(self, exc: BaseException) -> None:
        """Undo the receive path's open transaction after ``exc``, if SQLite has not already
        (it rolls back by itself on SQLITE_FULL); re-raise a full disk as ENOSPC."""
        c = self._hot_conn
        if c is not None and c.in_transaction:
            try:
                c.execute("ROLLBACK")
            except sqlite3.Error as err:  # the connection's state is unknown: start a new one
                LOG.warning("ledger rollback failed (%s); reopening the receive connection", err)
                c.close()
                self._hot_conn = None
        full = disk_full_error(exc, self.path)
        if full is not None and full is not exc:
            raise full from exc


class _Tx:
    """One write transaction under the process-wide writer lock; a full disk leaves it as
    ``OSError(ENOSPC)``."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self._cm: Any = None

    def __enter__(self) -> Connection:
        self._store._write.acquire()
        try:
            self._cm = self._store.engine.begin()
            return self._cm.__enter__()
        except BaseException as exc:
            self._store._write.release()
            full = disk_full_error(exc, self._store.path)
            if full is not None and full is not exc:
                raise full from exc
            raise

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            try:
                self._cm.__exit__(typ, exc, tb)  # commit, or roll back after ``exc``
            except BaseException as err:  # the commit (or the rollback) failed
                full = disk_full_error(err, self._store.path)
                if full is not None and full is not err:
                    raise full from err
                raise
            if exc is not None:
                full = disk_full_error(exc, self._store.path)
                if full is not None and full is not exc:
                    raise full from exc
        finally:
            self._store._write.release()
