"""The SQLite ledger: what was received, what is complete, what ran, what was delivered.

SQLAlchemy Core over one SQLite file in WAL mode (``<state_dir>/ledger.sqlite``). Every
method is one transaction that is committed before it returns, so a caller that acts
after the call acts on a durable state ("a transition is committed before the work it
starts"). States are the enums of :mod:`pacsnode.states`.

One :class:`Ledger`, put together from one module per thing it records:

- :mod:`.tables` — the schema (and the columns added to older ledgers);
- :mod:`.store` — connections, the writer lock, and a full disk as ``OSError(ENOSPC)``;
- :mod:`.instances` — instances, series and units (the receive path's one write);
- :mod:`.jobs` — inference jobs keyed (unit UID, model sha256);
- :mod:`.deliveries` — the outbox;
- :mod:`.destinations` — each destination up or down, since when and why.

Durability: each instance is durable (in the spool journal, or its file fsynced) before its
row is written; the ledger runs with ``synchronous=NORMAL`` (a commit survives a crash of
the process, and the database stays consistent on power loss). :meth:`Ledger.known_paths`
lets the node re-index spool files whose rows a power cut took away.
"""

from __future__ import annotations

from sqlalchemy import func, select

from pacsnode.ledger.deliveries import DeliveriesMixin, DeliveryRow
from pacsnode.ledger.destinations import DestinationRow, DestinationsMixin
from pacsnode.ledger.instances import (
    InstanceRecord,
    InstancesMixin,
    RecordOutcome,
    SeriesAttributes,
    SeriesRow,
    UnitRow,
)
from pacsnode.ledger.jobs import JobRow, JobsMixin
from pacsnode.ledger.tables import deliveries, instances, jobs, series, units

__all__ = [
    "Ledger",
    "InstanceRecord",
    "SeriesAttributes",
    "RecordOutcome",
    "UnitRow",
    "SeriesRow",
    "JobRow",
    "DeliveryRow",
    "DestinationRow",
]


class Ledger(InstancesMixin, JobsMixin, DeliveriesMixin, DestinationsMixin):
    """The node's durable state. Thread-safe; one writer at a time inside the process."""

    def counts(self) -> dict[str, dict[str, int]]:
        """{"units": {state: n}, "series": ..., "jobs": ..., "deliveries": ..., "instances": {"total": n}}."""
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as c:
            for name, table in (("units", units), ("series", series), ("jobs", jobs),
                                ("deliveries", deliveries)):
                rows = c.execute(select(table.c.state, func.count()).group_by(table.c.state))
                out[name] = {str(s): int(n) for s, n in rows}
            out["instances"] = {
                "total": int(c.execute(select(func.count()).select_from(instances)).scalar_one())
            }
        return out
