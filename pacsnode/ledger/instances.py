"""What was received: instances, their series, and the units of work they make up.

A unit is a series, or a study when ``series.group_by = "study"``; its generation grows
when a late instance reopens it after it completed. :meth:`InstancesMixin.record_instance`
is the receive path's one write and runs as prepared SQL on a raw sqlite3 connection.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from pacsnode.errors import LedgerError
from pacsnode.ledger.store import LedgerStore
from pacsnode.ledger.tables import instances, series, units
from pacsnode.states import SeriesState

__all__ = ["SeriesAttributes", "InstanceRecord", "RecordOutcome", "UnitRow", "SeriesRow",
           "InstancesMixin", "UNIT_FROM", "set_unit"]


@dataclass(frozen=True)
class SeriesAttributes:
    """What routing looks at, read from an instance's header."""

    modality: str = ""
    series_description: str = ""
    body_part: str = ""
    image_type: tuple[str, ...] = ()
    sop_class_uid: str = ""
    series_number: int | None = None


@dataclass(frozen=True)
class InstanceRecord:
    """One received instance, already safe in the spool."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    path: Path
    size: int
    transfer_syntax: str


@dataclass(frozen=True)
class RecordOutcome:
    """What :meth:`Ledger.record_instance` did."""

    stored: bool  # False: the SOP Instance UID was already there (nothing written)
    unit_uid: str
    generation: int
    unit_created: bool  # the first instance of the unit
    reopened: bool  # a late instance reopened a unit that had completed


@dataclass(frozen=True)
class UnitRow:
    uid: str
    kind: str
    study_uid: str
    state: SeriesState
    generation: int
    instance_count: int
    route: str | None
    reason: str | None
    first_received_at: float
    last_received_at: float
    completed_at: float | None
    updated_at: float
    purged_at: float | None


@dataclass(frozen=True)
class SeriesRow:
    series_uid: str
    study_uid: str
    unit_uid: str
    modality: str
    series_description: str
    body_part: str
    image_type: tuple[str, ...]
    sop_class_uid: str
    series_number: int | None
    instance_count: int
    state: SeriesState
    generation: int
    reason: str | None
    first_received_at: float
    last_received_at: float
    updated_at: float

    @property
    def attributes(self) -> SeriesAttributes:
        return SeriesAttributes(
            modality=self.modality,
            series_description=self.series_description,
            body_part=self.body_part,
            image_type=self.image_type,
            sop_class_uid=self.sop_class_uid,
            series_number=self.series_number,
        )


def unit_row(row: Any) -> UnitRow:
    m = dict(row._mapping)
    m["state"] = SeriesState(m["state"])
    return UnitRow(**m)


def series_row(row: Any) -> SeriesRow:
    m = dict(row._mapping)
    m["state"] = SeriesState(m["state"])
    m["image_type"] = tuple(v for v in (m["image_type"] or "").split("\\") if v)
    return SeriesRow(**m)



# The receive path's statements (see Ledger._hot).
_SQL_FIND = "SELECT path FROM instances WHERE sop_instance_uid = ?"
_SQL_INSERT_INSTANCE = (
    "INSERT INTO instances (sop_instance_uid, sop_class_uid, series_uid, study_uid, unit_uid, "
    "path, size, transfer_syntax, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (sop_instance_uid) DO NOTHING"
)
_SQL_UNIT_STATE = "SELECT state, generation FROM units WHERE uid = ?"
_SQL_INSERT_UNIT = (
    "INSERT INTO units (uid, kind, study_uid, state, generation, instance_count, "
    "first_received_at, last_received_at, updated_at) VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?)"
)
_SQL_REOPEN_UNIT = (
    "UPDATE units SET state = ?, generation = ?, instance_count = instance_count + 1, "
    "reason = NULL, completed_at = NULL, purged_at = NULL, last_received_at = ?, updated_at = ? "
    "WHERE uid = ?"
)
_SQL_TOUCH_UNIT = (
    "UPDATE units SET instance_count = instance_count + ?, last_received_at = ?, updated_at = ? "
    "WHERE uid = ?"
)
_SQL_UPSERT_SERIES = (
    "INSERT INTO series (series_uid, study_uid, unit_uid, modality, series_description, "
    "body_part, image_type, sop_class_uid, series_number, instance_count, state, generation, "
    "first_received_at, last_received_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?) "
    "ON CONFLICT (series_uid) DO UPDATE SET instance_count = instance_count + 1, "
    "last_received_at = ?, updated_at = ?, reason = NULL, state = ?, generation = ?"
)
# Which unit states each unit transition may start from.
UNIT_FROM: dict[SeriesState, frozenset[SeriesState]] = {
    SeriesState.COMPLETE: frozenset({SeriesState.RECEIVING}),
    SeriesState.QUEUED: frozenset({SeriesState.COMPLETE, SeriesState.QUEUED, SeriesState.RUNNING,
                                   SeriesState.DONE, SeriesState.FAILED}),
    SeriesState.IGNORED: frozenset({SeriesState.COMPLETE}),
    SeriesState.FAILED: frozenset({SeriesState.COMPLETE, SeriesState.QUEUED, SeriesState.RUNNING}),
}


def set_unit(c: Connection, uid: str, state: SeriesState, now: float, **extra: Any) -> None:
    """Move a unit and its series to ``state`` inside the transaction ``c``."""
    c.execute(update(units).where(units.c.uid == uid).values(state=state.value, updated_at=now, **extra))
    sv: dict[str, Any] = {"state": state.value, "updated_at": now}
    if "reason" in extra:
        sv["reason"] = extra["reason"]
    c.execute(update(series).where(series.c.unit_uid == uid).values(**sv))


class InstancesMixin(LedgerStore):
    """Instances, series and units."""

    def instance_path(self, sop_instance_uid: str) -> Path | None:
        """The spool path of an instance already recorded, else None."""
        with self._write:
            row = self._hot().execute(_SQL_FIND, (sop_instance_uid,)).fetchone()
        return Path(row[0]) if row is not None else None

    def record_instance(
        self,
        rec: InstanceRecord,
        attrs: SeriesAttributes,
        *,
        unit_uid: str,
        unit_kind: str,
        now: float | None = None,
    ) -> RecordOutcome:
        """Record an instance whose file is already durable; create or reopen its unit.

        One transaction, committed before it returns. A SOP Instance UID already present is
        a duplicate: nothing changes except that the unit's last activity time moves on
        while it is still receiving.
        """
        now = time.time() if now is None else now
        receiving = SeriesState.RECEIVING.value
        with self._write:
            c = self._hot()
            try:
                c.execute("BEGIN IMMEDIATE")
                cur = c.execute(_SQL_INSERT_INSTANCE, (
                    rec.sop_instance_uid, rec.sop_class_uid, rec.series_uid, rec.study_uid,
                    unit_uid, str(rec.path), rec.size, rec.transfer_syntax, now))
                stored = cur.rowcount == 1
                u = c.execute(_SQL_UNIT_STATE, (unit_uid,)).fetchone()
                created = reopened = False
                if u is None:
                    created = True
                    generation = 1
                    c.execute(_SQL_INSERT_UNIT, (unit_uid, unit_kind, rec.study_uid, receiving,
                                                 1 if stored else 0, now, now, now))
                else:
                    state, generation = u
                    if stored and state != receiving:
                        reopened = True
                        generation += 1
                        c.execute(_SQL_REOPEN_UNIT, (receiving, generation, now, now, unit_uid))
                    elif stored:
                        c.execute(_SQL_TOUCH_UNIT, (1, now, now, unit_uid))
                    elif state == receiving:
                        c.execute(_SQL_TOUCH_UNIT, (0, now, now, unit_uid))
                if stored:
                    c.execute(_SQL_UPSERT_SERIES, (
                        rec.series_uid, rec.study_uid, unit_uid, attrs.modality,
                        attrs.series_description, attrs.body_part, "\\".join(attrs.image_type),
                        attrs.sop_class_uid, attrs.series_number, receiving, generation, now, now,
                        now, now, now, receiving, generation))
                c.execute("COMMIT")
            except BaseException as exc:
                self._hot_rollback(exc)  # raises OSError(ENOSPC) for a full disk
                raise
        return RecordOutcome(stored, unit_uid, generation, created, reopened)

    def instance_paths(self, unit_uid: str) -> list[Path]:
        """Spool paths of a unit's instances."""
        with self.engine.connect() as c:
            rows = c.execute(
                select(instances.c.path).where(instances.c.unit_uid == unit_uid).order_by(instances.c.id)
            ).scalars()
            return [Path(p) for p in rows]

    def known_paths(self) -> set[str]:
        """Every spool path the ledger knows (for re-indexing after a power cut)."""
        with self.engine.connect() as c:
            return set(c.execute(select(instances.c.path)).scalars())

    def instance_count(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(select(func.count()).select_from(instances)).scalar_one())

    # --- units and series ---------------------------------------------------------------------

    def unit(self, uid: str) -> UnitRow:
        with self.engine.connect() as c:
            row = c.execute(select(units).where(units.c.uid == uid)).first()
        if row is None:
            raise LedgerError(f"unit must exist in the ledger, got unknown UID {uid!r}")
        return unit_row(row)

    def units(self, states: Iterable[SeriesState | str] | None = None) -> list[UnitRow]:
        q = select(units).order_by(units.c.first_received_at)
        if states is not None:
            q = q.where(units.c.state.in_([SeriesState(s).value for s in states]))
        with self.engine.connect() as c:
            return [unit_row(r) for r in c.execute(q)]

    def series(self, unit_uid: str | None = None) -> list[SeriesRow]:
        q = select(series).order_by(series.c.first_received_at)
        if unit_uid is not None:
            q = q.where(series.c.unit_uid == unit_uid)
        with self.engine.connect() as c:
            return [series_row(r) for r in c.execute(q)]

    def complete_unit(self, uid: str, *, now: float | None = None) -> int | None:
        """receiving → complete. Returns the generation completed, or None if the unit was
        not receiving (already completed: completing twice is a no-op)."""
        now = time.time() if now is None else now
        with self._tx() as c:
            row = c.execute(select(units.c.state, units.c.generation).where(units.c.uid == uid)
                            .with_for_update()).first()
            if row is None or row.state != SeriesState.RECEIVING.value:
                return None
            set_unit(c, uid, SeriesState.COMPLETE, now, completed_at=now, reason=None)
            return int(row.generation)

    def set_unit_state(
        self, uid: str, state: SeriesState | str, *, reason: str | None = None,
        route: str | None = None, now: float | None = None,
    ) -> None:
        """An explicit unit transition (complete → ignored | queued | failed, ...)."""
        state = SeriesState(state)
        now = time.time() if now is None else now
        allowed = UNIT_FROM.get(state)
        with self._tx() as c:
            row = c.execute(select(units.c.state).where(units.c.uid == uid).with_for_update()).first()
            if row is None:
                raise LedgerError(f"unit must exist in the ledger, got unknown UID {uid!r}")
            if allowed is None or row.state not in allowed:
                valid = ", ".join(sorted(s.value for s in allowed or ()))
                raise LedgerError(
                    f"unit {uid} may move to {state.value} only from {valid or 'nowhere'}, "
                    f"got state {row.state}"
                )
            extra: dict[str, Any] = {"reason": reason}
            if route is not None:
                extra["route"] = route
            set_unit(c, uid, state, now, **extra)

    def mark_purged(self, uid: str, *, now: float | None = None) -> None:
        """Retention removed the unit's instance files: forget their rows, keep the unit's."""
        now = time.time() if now is None else now
        with self._tx() as c:
            c.execute(instances.delete().where(instances.c.unit_uid == uid))
            c.execute(update(units).where(units.c.uid == uid).values(purged_at=now, updated_at=now))
