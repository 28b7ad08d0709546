"""The delivery stage: the ledger's outbox → C-STORE to each destination, by its own policy.

A delivery row is pending until its file is stored at its destination (sent) or it has
been failing for longer than ``delivery.horizon_hours`` since its first attempt (failed,
dead letter, with the reason and since when). Pending deliveries of one job to one
destination go out over one association. The policy is :mod:`pacsnode.delivery.outbox`'s
pure predicates over the rows; this module only carries it out:

- a peer that answers and refuses (a failure status) is retried with capped exponential
  backoff (``delivery.backoff_seconds`` …), its destination stays up;
- a connection or association that fails marks the destination down (the ledger's
  ``destinations`` row says since when and why). While it is down its deliveries are not
  attempted one by one: a persisted probe (``probe(destination)``, every
  ``delivery.probe_seconds`` on the scheduler's timers) C-ECHOes it, and as soon as it
  answers, it is up and every pending delivery to it is sent at once;
- a row past the horizon is dead-lettered, logged as an error and counted, never silently.

Every attempt is recorded before the next is scheduled, so a node that restarts picks the
outbox and the probes up where it stopped (:meth:`Dispatcher.resume`). A result is resent
only if the node stopped between the peer's success and the ledger's commit; the instance
then carries the same SOP Instance UID, which the PACS stores once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pacsnode.config import Settings
from pacsnode.delivery import (
    dead_letter_reason,
    down_reason,
    held_reason,
    is_delivery_due,
    is_past_horizon,
    next_attempt_at,
)
from pacsnode.delivery.send import probe_destination, send_results
from pacsnode.errors import DeliveryError, LedgerError
from pacsnode.ledger import DeliveryRow, DestinationRow, Ledger
from pacsnode.scheduler import Scheduler
from pacsnode.states import DeliveryState, DestinationState

__all__ = ["Dispatcher", "DELIVERY_HANDLER", "PROBE_HANDLER"]

LOG = logging.getLogger(__name__)

DELIVERY_HANDLER = "deliver"
PROBE_HANDLER = "probe"
DEAD_LETTERED = "deliveries_dead_lettered_total"
UNREACHABLE = "delivery_attempts_unreachable_total"
REFUSED = "delivery_attempts_refused_total"
_DUE_SLACK = 0.5  # a timer may fire a little before the stored time of the next attempt


def delivery_timer_id(job_id: int, destination: str) -> str:
    return f"deliver-{job_id}-{destination}"


def probe_timer_id(destination: str) -> str:
    return f"probe-{destination}"


class Dispatcher:
    """Sends pending deliveries; ``deliver(job_id, destination)`` and ``probe(destination)``
    are its persisted jobs. ``count(name, n)`` counts dead letters and results not stored by an
    attempt, unreachable or refused (the node's metrics)."""

    def __init__(self, settings: Settings, ledger: Ledger, scheduler: Scheduler, *,
                 observe: Callable[[str, float], None] | None = None,
                 count: Callable[[str, float], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.policy = settings.delivery
        self.ledger = ledger
        self.scheduler = scheduler
        self.observe = observe or (lambda _name, _seconds: None)
        self.count = count or (lambda _name, _n: None)
        self.clock = clock
        self.on_sent: Callable[..., None] | None = None  # (destination, paths, stored, error): the audit
        self._lock = threading.Lock()
        self._probes_set: set[str] = set()  # probes (re)armed by this process with today's interval

    # --- scheduling -------------------------------------------------------------------------

    def submit(self, job_id: int, destination: str, at: float | None = None) -> None:
        self.scheduler.arm(delivery_timer_id(job_id, destination), self.clock() if at is None else at,
                           DELIVERY_HANDLER, job_id, destination, executor="timers")

    def submit_rows(self, rows: Sequence[DeliveryRow]) -> None:
        now = self.clock()
        for job_id, dest in sorted({(r.job_id, r.destination) for r in rows}):
            due = min((r.next_attempt_at or 0.0) for r in rows if (r.job_id, r.destination) == (job_id, dest))
            self.submit(job_id, dest, max(due, now))

    def resume(self) -> int:
        """Probe every configured destination that is down, and schedule every other pending
        delivery that has no timer (after a restart, or `deliveries retry` from another process)."""
        down = {d.name for d in self.ledger.destinations()
                if d.state is DestinationState.DOWN and d.name in self.settings.destinations}
        for name in sorted(down):
            self._ensure_probe(name)
        pending = [r for r in self.ledger.deliveries([DeliveryState.PENDING]) if r.destination not in down]
        missing = [r for r in pending if not self.scheduler.has(delivery_timer_id(r.job_id, r.destination))]
        self.submit_rows(missing)
        return len(missing)

    def _ensure_probe(self, destination: str) -> None:
        """A persisted C-ECHO probe every ``probe_seconds``; set once per process with the
        configured interval (a probe persisted by an earlier run keeps running meanwhile)."""
        timer = probe_timer_id(destination)
        if destination in self._probes_set and self.scheduler.has(timer):
            return
        self.scheduler.every(timer, self.policy.probe_seconds, PROBE_HANDLER, destination, executor="timers")
        self._probes_set.add(destination)

    def _stop_probe(self, destination: str) -> None:
        self.scheduler.cancel(probe_timer_id(destination))
        self._probes_set.discard(destination)

    # --- outcomes ---------------------------------------------------------------------------

    def _dead_letter(self, r: DeliveryRow, reason: str, now: float, *, attempted: bool) -> None:
        self.ledger.mark_delivery_failed(r.id, reason, attempted=attempted, now=now)
        self.count(DEAD_LETTERED, 1)
        LOG.error("delivery %s (%s to %s) dead-lettered: %s", r.id, Path(r.dataset_path).name,
                  r.destination, reason)

    def _expire(self, r: DeliveryRow, now: float, down: DestinationRow | None) -> bool:
        """Dead-letter ``r`` if it is past the horizon, saying why: its destination is down
        (``down``), else its own last error. True when it was."""
        if r.failing_since is None or not is_past_horizon(r.failing_since, now, self.policy):
            return False
        error = (down_reason(down.name, down.since, down.last_error) if down is not None
                 else r.last_error or "not delivered")
        self._dead_letter(r, dead_letter_reason(error, r.failing_since, self.policy), now, attempted=False)
        return True

    def _hold(self, rows: Sequence[DeliveryRow], dest: DestinationRow, now: float) -> None:
        """The destination is down: no attempt; each row waits for the probe (or its horizon)."""
        for r in rows:
            if not self._expire(r, now, dest):
                self.ledger.mark_delivery_held(r.id, held_reason(dest.name, dest.since, dest.last_error), now=now)
        self._ensure_probe(dest.name)

    # --- the persisted jobs -----------------------------------------------------------------

    def deliver(self, job_id: int, destination: str) -> None:
        """One attempt at every due pending delivery of ``job_id`` to ``destination``."""
        with self._lock:
            now = self.clock()
            rows = self.ledger.deliveries([DeliveryState.PENDING], job_id=job_id, destination=destination)
            if not rows:
                return
            dest = self.settings.destinations.get(destination)
            if dest is None:
                valid = ", ".join(sorted(self.settings.destinations)) or "none"
                for r in rows:
                    self._dead_letter(r, f"destination must be configured, got {destination!r}; valid: {valid}",
                                      now, attempted=False)
                return
            state = self.ledger.destination(destination)
            if state is not None and state.state is DestinationState.DOWN:
                self._hold(rows, state, now)
                return
            rows = [r for r in rows if not self._expire(r, now, None)]
            for r in [r for r in rows if not Path(r.dataset_path).is_file()]:
                self._dead_letter(r, f"result file must exist, got {r.dataset_path} missing", now, attempted=False)
            rows = [r for r in rows if Path(r.dataset_path).is_file() and is_delivery_due(
                r.state, r.next_attempt_at, r.failing_since, now + _DUE_SLACK, self.policy)]
            if rows:
                self._send(job_id, destination, rows)

    def _send(self, job_id: int, destination: str, rows: list[DeliveryRow]) -> None:
        dest = self.settings.destinations[destination]
        calling = dest.calling_ae_title or self.settings.node.ae_title
        t0 = time.perf_counter()
        unreachable = False
        try:
            outcomes = send_results(dest, [Path(r.dataset_path) for r in rows], calling,
                                    timeout=self.settings.node.network_timeout)
            error = None
        except DeliveryError as exc:
            outcomes = list(getattr(exc, "outcomes", []) or [])
            error = str(exc)
            unreachable = bool(getattr(exc, "unreachable", False))
        self.observe("delivery", time.perf_counter() - t0)
        not_stored = sum(1 for i in range(len(rows)) if not (i < len(outcomes) and outcomes[i].stored))
        if not_stored:  # the node's failures_total{stage="delivery", cause="unreachable" | "refused"}
            self.count(UNREACHABLE if unreachable else REFUSED, not_stored)
        if self.on_sent is not None:
            self.on_sent(destination, [Path(r.dataset_path) for r in rows], [o.stored for o in outcomes], error)
        now = self.clock()
        if unreachable:
            row, changed = self.ledger.mark_destination(destination, DestinationState.DOWN, error=error, now=now)
            if changed:
                LOG.error("destination %s is down: %s; C-ECHO every %g s, its deliveries wait for it",
                          destination, error, self.policy.probe_seconds)
            self._ensure_probe(destination)
        else:  # it answered, even if it refused some
            self.ledger.mark_destination(destination, DestinationState.UP, now=now)
        retry_at = None
        for i, r in enumerate(rows):
            ok = i < len(outcomes) and outcomes[i].stored  # outcomes come in the order sent
            try:
                if ok:
                    self.ledger.mark_delivery_sent(r.id, now=now)
                    LOG.info("delivery %s: %s sent to %s", r.id, Path(r.dataset_path).name, destination)
                    continue
                reason = error or "the destination did not store it"
                since = r.failing_since if r.failing_since is not None else now
                if is_past_horizon(since, now, self.policy):
                    self._dead_letter(r, dead_letter_reason(reason, since, self.policy), now, attempted=True)
                    continue
                at = next_attempt_at(r.attempts + 1, now, self.policy)
                self.ledger.mark_delivery_retry(r.id, reason, at, now=now)
                if unreachable:
                    LOG.warning("delivery %s to %s attempt %d failed (%s); sent when the destination answers",
                                r.id, destination, r.attempts + 1, reason)
                else:
                    retry_at = at if retry_at is None else min(retry_at, at)
                    LOG.warning("delivery %s to %s attempt %d refused (%s); retry at +%.0f s", r.id,
                                destination, r.attempts + 1, reason, at - now)
            except LedgerError as exc:
                LOG.warning("delivery %s not updated: %s", r.id, exc)
        if retry_at is not None:
            self.submit(job_id, destination, retry_at)

    def probe(self, destination: str) -> None:
        """C-ECHO a destination that is down: up → send all its deliveries now; still down →
        dead-letter those past the horizon."""
        dest = self.settings.destinations.get(destination)
        state = self.ledger.destination(destination)
        if dest is None or state is None or state.state is DestinationState.UP:
            self._stop_probe(destination)  # gone from the config, or seen up meanwhile
            return
        timeout = max(5.0, min(self.settings.node.network_timeout, self.policy.probe_seconds))
        try:
            probe_destination(dest, self.settings.node.ae_title, timeout=timeout)
            error = None
        except DeliveryError as exc:
            error = str(exc)
        with self._lock:
            now = self.clock()
            if error is not None:
                row, _ = self.ledger.mark_destination(destination, DestinationState.DOWN, error=error,
                                                      probed=True, now=now)
                for r in self.ledger.deliveries([DeliveryState.PENDING], destination=destination):
                    if r.failing_since is None:  # queued (or retried by hand) while it was down
                        self.ledger.mark_delivery_held(r.id, held_reason(destination, row.since, row.last_error),
                                                       now=now)
                    else:
                        self._expire(r, now, row)
                return
            self.ledger.mark_destination(destination, DestinationState.UP, probed=True, now=now)
            self._stop_probe(destination)
            rows = self.ledger.make_deliveries_due(destination, now=now)
            LOG.warning("destination %s answers again after %.0f s down: sending its %d pending deliveries",
                        destination, now - state.since, len(rows))
            self.submit_rows(rows)
