"""Operations: metrics, status, health, systemd notify/watchdog, retention.

One module per job:

- :mod:`.metrics` — :class:`Metrics`: counters (``inc``), failures by stage and cause
  (``failure``), a histogram of stage durations (``observe``), rendered through
  prometheus-client with the process and Python collectors;
- :mod:`.status` — :func:`status_snapshot` (the ledger and the node's facts as JSON) and
  :func:`degraded_reasons` (a destination down, deliveries dead-lettered, jobs failed, free
  disk below the mark);
- :mod:`.page` — the HTML status page drawn from a snapshot;
- :mod:`.http` — :class:`StatusServer`: ``/``, ``/status``, ``/metrics``, ``/healthz``,
  ``/readyz``; started only when ``metrics.port`` is not 0;
- :mod:`.systemd` — :func:`sd_notify` (READY=1 / WATCHDOG=1 / STOPPING=1), :func:`watchdog_interval`;
- :mod:`.retention` — :func:`retention_sweep`: the spool files of finished units past their age.
"""

from __future__ import annotations

from collections.abc import Iterable

from pacsnode.ledger import Ledger
from pacsnode.ops.http import StatusServer
from pacsnode.ops.metrics import Metrics, count_job_failures, status_families
from pacsnode.ops.page import render_page
from pacsnode.ops.retention import retention_sweep
from pacsnode.ops.status import NodeFacts, degraded_reasons, readiness, status_snapshot
from pacsnode.ops.systemd import sd_notify, watchdog_interval

__all__ = [
    "Metrics",
    "NodeFacts",
    "status_snapshot",
    "degraded_reasons",
    "StatusServer",
    "status_page",
    "status_families",
    "count_job_failures",
    "readiness",
    "sd_notify",
    "watchdog_interval",
    "retention_sweep",
]


def status_page(ledger: Ledger, metrics: Metrics, healthy: bool, latest: int = 20, *,
                destinations: Iterable[str] = (), facts: NodeFacts | None = None) -> str:
    """The node's status as an HTML page that refreshes itself in place (UIDs, AE titles and
    descriptions only, no patient data)."""
    snap = status_snapshot(ledger, destinations, facts=facts, latest=latest)
    return render_page(snap, healthy, metrics.snapshot()["timings"])
