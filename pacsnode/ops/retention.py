"""Retention: the spool files of finished units go once they are old enough."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from pacsnode.config import RetentionSettings
from pacsnode.ledger import Ledger
from pacsnode.states import SeriesState

if TYPE_CHECKING:
    from pacsnode.receive.spool import Spool

__all__ = ["retention_sweep"]

LOG = logging.getLogger(__name__)


def retention_sweep(ledger: Ledger, spool: Spool, settings: RetentionSettings,
                    now: float | None = None) -> int:
    """Delete the spool files of done / failed / ignored units older than their retention
    age (measured from the unit's last change); returns how many units were purged."""
    now = time.time() if now is None else now
    ages = {
        SeriesState.DONE: settings.done_days * 86400,
        SeriesState.FAILED: settings.failed_days * 86400,
        SeriesState.IGNORED: settings.ignored_hours * 3600,
    }
    purged = 0
    for unit in ledger.units(ages):
        if unit.purged_at is not None or now - unit.updated_at < ages[unit.state]:
            continue
        for path in ledger.instance_paths(unit.uid):
            spool.remove(path)
        ledger.mark_purged(unit.uid, now=now)
        purged += 1
        LOG.info("retention: removed the instances of %s unit %s", unit.state.value, unit.uid)
    return purged
