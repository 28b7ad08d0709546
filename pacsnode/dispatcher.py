"""The delivery stage: the ledger's outbox → C-STORE to each destination, with retries.

A delivery row is pending until its file is stored at its destination (sent) or its
attempts are spent (failed, with the reason). Pending deliveries of one job to one
destination go out over one association. Every attempt is recorded before the next is
scheduled, so a PACS that is down for a while receives each result once it is back, and
a node that restarts picks the outbox up where it stopped (:meth:`Dispatcher.resume`).
A result is resent only if the node stopped between the peer's success and the ledger's
commit; the instance then carries the same SOP Instance UID, which the PACS stores once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pacsnode.config import Settings
from pacsnode.delivery import is_exhausted, next_attempt_at, send_datasets
from pacsnode.errors import DeliveryError, LedgerError
from pacsnode.ledger import DeliveryRow, Ledger
from pacsnode.scheduler import Scheduler
from pacsnode.states import DeliveryState

__all__ = ["Dispatcher", "DELIVERY_HANDLER"]

LOG = logging.getLogger(__name__)

DELIVERY_HANDLER = "deliver"


def delivery_timer_id(job_id: int, destination: str) -> str:
    return f"deliver-{job_id}-{destination}"


class Dispatcher:
    """Sends pending deliveries; ``deliver(job_id, destination)`` is its persisted job."""

    def __init__(self, settings: Settings, ledger: Ledger, scheduler: Scheduler, *,
                 observe: Callable[[str, float], None] | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.scheduler = scheduler
        self.observe = observe or (lambda _name, _seconds: None)
        self._lock = threading.Lock()

    def submit(self, job_id: int, destination: str, at: float | None = None) -> None:
        self.scheduler.arm(delivery_timer_id(job_id, destination), time.time() if at is None else at,
                           DELIVERY_HANDLER, job_id, destination, executor="timers")

    def submit_rows(self, rows: Sequence[DeliveryRow]) -> None:
        for job_id, dest in sorted({(r.job_id, r.destination) for r in rows}):
            due = min((r.next_attempt_at or 0.0) for r in rows if (r.job_id, r.destination) == (job_id, dest))
            self.submit(job_id, dest, max(due, time.time()))

    def resume(self) -> int:
        """Schedule every pending delivery (after a restart, or from `deliveries retry`)."""
        pending = self.ledger.deliveries([DeliveryState.PENDING])
        missing = [r for r in pending if not self.scheduler.has(delivery_timer_id(r.job_id, r.destination))]
        self.submit_rows(missing)
        return len(missing)

    def deliver(self, job_id: int, destination: str) -> None:
        """One attempt at every due pending delivery of ``job_id`` to ``destination``."""
        with self._lock:
            now = time.time()
            rows = [r for r in self.ledger.deliveries([DeliveryState.PENDING], job_id=job_id)
                    if r.destination == destination and (r.next_attempt_at or 0.0) <= now + 0.5]
            if not rows:
                return
            dest = self.settings.destinations.get(destination)
            if dest is None:
                valid = ", ".join(sorted(self.settings.destinations)) or "none"
                for r in rows:
                    self.ledger.mark_delivery_failed(
                        r.id, f"destination must be configured, got {destination!r}; valid: {valid}")
                return
            missing = [r for r in rows if not Path(r.dataset_path).is_file()]
            for r in missing:
                self.ledger.mark_delivery_failed(r.id, f"result file must exist, got {r.dataset_path} missing")
            rows = [r for r in rows if r not in missing]
            if not rows:
                return
            calling = dest.calling_ae_title or self.settings.node.ae_title
            t0 = time.perf_counter()
            try:
                outcomes = send_datasets(dest, [Path(r.dataset_path) for r in rows], calling,
                                         timeout=self.settings.node.network_timeout)
                error = None
            except DeliveryError as exc:
                outcomes = list(getattr(exc, "outcomes", []) or [])
                error = str(exc)
            self.observe("delivery", time.perf_counter() - t0)
            retry_at = None
            for i, r in enumerate(rows):
                ok = i < len(outcomes) and outcomes[i].stored  # outcomes come in the order sent
                try:
                    if ok:
                        self.ledger.mark_delivery_sent(r.id)
                        LOG.info("delivery %s: %s sent to %s", r.id, Path(r.dataset_path).name, destination)
                        continue
                    reason = error or "the destination did not store it"
                    attempts = r.attempts + 1
                    if is_exhausted(attempts, self.settings.scheduler):
                        self.ledger.mark_delivery_failed(r.id, f"{reason} (after {attempts} attempts)")
                        LOG.error("delivery %s to %s failed after %d attempts: %s", r.id, destination,
                                  attempts, reason)
                    else:
                        at = next_attempt_at(attempts, time.time(), self.settings.scheduler)
                        self.ledger.mark_delivery_retry(r.id, reason, at)
                        retry_at = at if retry_at is None else min(retry_at, at)
                        LOG.warning("delivery %s to %s attempt %d failed (%s); retry at +%.0f s", r.id,
                                    destination, attempts, reason, at - time.time())
                except LedgerError as exc:
                    LOG.warning("delivery %s not updated: %s", r.id, exc)
            if retry_at is not None:
                self.submit(job_id, destination, retry_at)
