"""Completeness: when has a series (or study) stopped arriving?

A unit of work is a series, or a study when ``series.group_by = "study"``. Each unit has
one idle timer, a persisted APScheduler date job with the fixed id ``stable-<UID>``. The
timer is armed when the unit's first instance arrives (or a late instance reopens it),
and every instance pushes the unit's ``last_received_at`` in the ledger. When the timer
fires it compares that time with ``stable_seconds``: still active → it re-arms itself for
``last_received_at + stable_seconds``; quiet → the unit is complete (committed) and
handed to the completion callback (routing). This is an idle timer re-armed by every
instance that costs one job-store write per unit instead of one per instance.

Restart: the job store keeps the timers, and :meth:`Completeness.resume` re-arms every
unit the ledger shows receiving (a timer lost in a crash is re-created). The quiet period
of a unit still receiving starts again when the node starts: while the node was down its
senders could not reach it (a PACS resends after a failed association), so the time it
was down is not silence, and a crash or restart longer than ``stable_seconds`` never
completes a half-received series. A quiet unit whose instance files are not all in the
spool yet (a write after Success failed; the spool journal restores it) waits another
period. Completing is idempotent in the ledger (receiving →
complete only once per generation), so a timer can never complete a unit twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pacsnode.config import SeriesSettings
from pacsnode.errors import LedgerError
from pacsnode.ledger import Ledger, RecordOutcome
from pacsnode.scheduler import Scheduler
from pacsnode.states import SeriesState

__all__ = ["Completeness", "STABLE_HANDLER", "unit_of", "timer_id"]

LOG = logging.getLogger(__name__)

STABLE_HANDLER = "unit-stable"


def unit_of(study_uid: str, series_uid: str, group_by: str) -> tuple[str, str]:
    """(unit UID, unit kind) of an instance for the configured grouping."""
    if group_by == "study":
        return study_uid, "study"
    return series_uid, "series"


def timer_id(unit_uid: str) -> str:
    return f"stable-{unit_uid}"


class Completeness:
    """Idle timers per unit; calls ``on_complete(unit_uid, generation)`` once per completion.

    ``clock`` gives the time (POSIX seconds) quiet periods are measured with.
    """

    def __init__(
        self,
        ledger: Ledger,
        scheduler: Scheduler,
        settings: SeriesSettings,
        on_complete: Callable[[str, int], None],
        not_ready: Callable[[str], str | None] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.not_ready = not_ready  # a quiet unit completes only when this gives no reason
        self.ledger = ledger
        self.scheduler = scheduler
        self.settings = settings
        self.on_complete = on_complete
        self._armed: set[str] = set()
        self._lock = threading.Lock()
        self.clock = clock
        self._up_since = clock()  # no unit is quiet for longer than the node has been up

    def unit_of(self, study_uid: str, series_uid: str) -> tuple[str, str]:
        return unit_of(study_uid, series_uid, self.settings.group_by)

    def instance_recorded(self, outcome: RecordOutcome, now: float | None = None) -> None:
        """After an instance is committed: make sure its unit's timer exists."""
        uid = outcome.unit_uid
        with self._lock:
            need = outcome.unit_created or outcome.reopened or uid not in self._armed
            if need:
                self._armed.add(uid)
        if need:
            now = self.clock() if now is None else now
            self.arm(uid, now + self.settings.stable_seconds)

    def arm(self, unit_uid: str, at: float) -> None:
        with self._lock:
            self._armed.add(unit_uid)
        self.scheduler.arm(timer_id(unit_uid), at, STABLE_HANDLER, unit_uid, executor="timers")

    def fired(self, unit_uid: str) -> None:
        """The timer's handler."""
        with self._lock:
            self._armed.discard(unit_uid)
        try:
            unit = self.ledger.unit(unit_uid)
        except LedgerError:
            LOG.warning("timer fired for unit %s that the ledger does not know; dropped", unit_uid)
            return
        if unit.state is not SeriesState.RECEIVING:
            return
        now = self.clock()
        due = max(unit.last_received_at, self._up_since) + self.settings.stable_seconds
        if due > now + 0.01:
            self.arm(unit_uid, due)
            return
        why = self.not_ready(unit_uid) if self.not_ready is not None else None
        if why is not None:
            LOG.warning("unit %s is quiet but not complete: %s; checking again in %g s", unit_uid, why,
                        self.settings.stable_seconds)
            self.arm(unit_uid, now + self.settings.stable_seconds)
            return
        generation = self.ledger.complete_unit(unit_uid, now=now)
        if generation is None:
            return
        LOG.info("unit %s complete (generation %d, %d instances)", unit_uid, generation,
                 unit.instance_count)
        self.on_complete(unit_uid, generation)

    def resume(self) -> int:
        """Re-arm the timer of every unit still receiving; returns how many."""
        units = self.ledger.units([SeriesState.RECEIVING])
        self._up_since = max(self._up_since, self.clock())
        for u in units:
            self.arm(u.uid, max(u.last_received_at, self._up_since) + self.settings.stable_seconds)
        return len(units)
