"""Where results go: one row per destination the node has tried, up or down.

A destination is down from the moment a connection or association to it fails until it
answers a C-ECHO probe (or an association) again. ``since`` is when it entered its current
state; ``last_error`` why it is down; ``last_ok_at`` when it last answered; ``last_probe_at``
when it was last probed. A destination without a row has never failed: it counts as up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from pacsnode.ledger.store import LedgerStore
from pacsnode.ledger.tables import destinations
from pacsnode.states import DestinationState

__all__ = ["DestinationRow", "DestinationsMixin"]


@dataclass(frozen=True)
class DestinationRow:
    name: str
    state: DestinationState
    since: float
    last_error: str | None
    last_ok_at: float | None
    last_probe_at: float | None
    updated_at: float


def destination_row(row: Any) -> DestinationRow:
    m = dict(row._mapping)
    m["state"] = DestinationState(m["state"])
    return DestinationRow(**m)


class DestinationsMixin(LedgerStore):
    """Destination states."""

    def destination(self, name: str) -> DestinationRow | None:
        """The destination's row, or None when it has never failed (up)."""
        with self.engine.connect() as c:
            row = c.execute(select(destinations).where(destinations.c.name == name)).first()
        return destination_row(row) if row is not None else None

    def destinations(self) -> list[DestinationRow]:
        with self.engine.connect() as c:
            return [destination_row(r) for r in c.execute(select(destinations).order_by(destinations.c.name))]

    def mark_destination(
        self, name: str, state: DestinationState | str, *, error: str | None = None,
        probed: bool = False, now: float | None = None,
    ) -> tuple[DestinationRow, bool]:
        """Record that ``name`` is up (it answered) or down (with ``error``); ``probed``: by a
        C-ECHO probe. Returns the row and whether the state changed (a destination never seen
        before was up)."""
        state = DestinationState(state)
        now = time.time() if now is None else now
        up = state is DestinationState.UP
        values: dict[str, Any] = {"state": state.value, "updated_at": now,
                                  "last_error": None if up else error}
        if up:
            values["last_ok_at"] = now
        if probed:
            values["last_probe_at"] = now
        with self._tx() as c:
            old = c.execute(select(destinations.c.state).where(destinations.c.name == name)).first()
            previous = DestinationState(old.state) if old is not None else DestinationState.UP
            changed = previous is not state
            if changed:
                values["since"] = now
            if old is None:
                c.execute(destinations.insert().values(name=name, **{"since": now, **values}))
            else:
                c.execute(update(destinations).where(destinations.c.name == name).values(**values))
            row = c.execute(select(destinations).where(destinations.c.name == name)).one()
            return destination_row(row), changed
