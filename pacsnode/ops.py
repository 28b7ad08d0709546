"""Operations: metrics, status, health, systemd notify/watchdog, retention.

* :class:`Metrics` — counters and per-stage timings, rendered in the Prometheus text format.
* :func:`status_snapshot` — counts from the ledger (units, series, jobs, deliveries), each
  destination's state, and whether the node is degraded (:func:`degraded_reasons`: a
  destination down, deliveries dead-lettered, jobs failed).
* :class:`StatusServer` — a tiny stdlib HTTP server: ``/`` (an HTML status page that
  refreshes itself), ``/status`` (JSON), ``/metrics``, ``/healthz`` (liveness), ``/readyz``
  (503 with the reasons while degraded); started only when ``metrics.port`` is not 0.
* :func:`sd_notify` — READY=1 / WATCHDOG=1 / STOPPING=1 through ``$NOTIFY_SOCKET``.
* :func:`retention_sweep` — removes the spool files of finished units past their age.
"""

from __future__ import annotations

import html
import json
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from pacsnode.config import RetentionSettings
from pacsnode.delivery.outbox import down_reason
from pacsnode.ledger import Ledger
from pacsnode.states import DeliveryState, DestinationState, JobState, SeriesState

if TYPE_CHECKING:
    from pacsnode.receive.spool import Spool

__all__ = [
    "Metrics",
    "status_snapshot",
    "degraded_reasons",
    "StatusServer",
    "status_page",
    "readiness",
    "sd_notify",
    "watchdog_interval",
    "retention_sweep",
]

LOG = logging.getLogger(__name__)


class Metrics:
    """Thread-safe counters (``inc``) and stage timings (``observe``) for Prometheus."""

    _HELP = {
        "instances_received_total": "Instances stored (first copy only)",
        "instances_duplicate_total": "Instances received again and not stored twice",
        "instances_failed_total": "C-STORE requests answered with a failure status",
        "bytes_received_total": "Bytes of instances stored",
        "associations_accepted_total": "Associations accepted",
        "associations_rejected_total": "Associations rejected",
        "deliveries_dead_lettered_total": "Deliveries failed for good past delivery.horizon_hours (dead letter)",
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, float] = defaultdict(float)
        self._timings: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # count, sum

    def inc(self, name: str, value: float = 1.0) -> None:
        with self._lock:
            self._counters[name] += value

    def observe(self, stage: str, seconds: float) -> None:
        with self._lock:
            t = self._timings[stage]
            t[0] += 1
            t[1] += seconds

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"counters": dict(self._counters),
                    "timings": {k: {"count": v[0], "sum": v[1]} for k, v in self._timings.items()}}

    def render(self, gauges: dict[str, float] | None = None) -> str:
        """The Prometheus text exposition format."""
        snap = self.snapshot()
        lines: list[str] = []
        for name in sorted(set(self._HELP) | set(snap["counters"])):
            full = f"pacsnode_{name}"
            lines.append(f"# HELP {full} {self._HELP.get(name, name)}")
            lines.append(f"# TYPE {full} counter")
            lines.append(f"{full} {snap['counters'].get(name, 0.0):g}")
        if snap["timings"]:
            lines.append("# HELP pacsnode_stage_seconds Time spent per stage")
            lines.append("# TYPE pacsnode_stage_seconds summary")
            for stage, t in sorted(snap["timings"].items()):
                lines.append(f'pacsnode_stage_seconds_count{{stage="{stage}"}} {t["count"]:g}')
                lines.append(f'pacsnode_stage_seconds_sum{{stage="{stage}"}} {t["sum"]:.6f}')
        typed: set[str] = set()
        for name, value in sorted((gauges or {}).items()):
            metric, _, label = name.partition("|")
            full = f"pacsnode_{metric}"
            if full not in typed:  # one TYPE line per metric, however many labels
                typed.add(full)
                lines.append(f"# TYPE {full} gauge")
            lines.append(f"{full}{{{label}}} {value:g}" if label else f"{full} {value:g}")
        return "\n".join(lines) + "\n"


def status_snapshot(ledger: Ledger, destinations: Iterable[str] = ()) -> dict[str, Any]:
    """Counts by state from the ledger, the queue depth, the state of each destination (the
    configured ``destinations`` and any the ledger knows; one never failed is up), and
    ``state`` "ok" or "degraded" with the ``reasons``."""
    counts = ledger.counts()
    dests: dict[str, dict[str, Any]] = {
        name: {"state": DestinationState.UP.value, "since": None, "last_error": None, "last_ok_at": None,
               "last_probe_at": None} for name in destinations}
    for d in ledger.destinations():
        dests[d.name] = {"state": d.state.value, "since": d.since, "last_error": d.last_error,
                         "last_ok_at": d.last_ok_at, "last_probe_at": d.last_probe_at}
    snap: dict[str, Any] = {
        "units": counts["units"],
        "series": counts["series"],
        "jobs": counts["jobs"],
        "deliveries": counts["deliveries"],
        "instances": counts["instances"]["total"],
        "pending_units": counts["units"].get(SeriesState.RECEIVING.value, 0),
        "queue_depth": counts["jobs"].get("queued", 0) + counts["jobs"].get("retry", 0),
        "destinations": dict(sorted(dests.items())),
    }
    reasons = degraded_reasons(snap)
    snap["state"] = "degraded" if reasons else "ok"
    snap["reasons"] = reasons
    return snap


def degraded_reasons(snapshot: dict[str, Any]) -> list[str]:
    """Why the node is degraded, one line each (empty: it is not): destinations down since
    when and why, deliveries dead-lettered, jobs failed."""
    reasons = []
    for name, d in snapshot.get("destinations", {}).items():
        if d["state"] == DestinationState.DOWN.value:
            reasons.append(down_reason(name, d["since"], d["last_error"]))
    dead = snapshot["deliveries"].get(DeliveryState.FAILED.value, 0)
    if dead:
        reasons.append(f"{dead} {'delivery' if dead == 1 else 'deliveries'} dead-lettered "
                       f"(see `pacsnode deliveries`; `pacsnode deliveries retry ID` sends one again)")
    failed = snapshot["jobs"].get(JobState.FAILED.value, 0)
    if failed:
        reasons.append(f"{failed} {'job' if failed == 1 else 'jobs'} failed "
                       f"(see `pacsnode jobs`; `pacsnode jobs retry ID` runs one again)")
    return reasons


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>pacsnode status</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
th {{ background: #f3f3f3; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #cf222e; }} .warn {{ color: #9a6700; }}
.failed, .down {{ background: #ffebe9; }} .done, .sent, .up {{ background: #dafbe1; }}
</style></head><body>
<h1>pacsnode <span class="{health_class}">{health}</span></h1>
{reasons}
<p>{instances} instances in the ledger; {queue} jobs waiting. This page refreshes every 5 s.
Also: <a href="/status">/status</a> (JSON), <a href="/metrics">/metrics</a>,
<a href="/healthz">/healthz</a>, <a href="/readyz">/readyz</a>.</p>
<h2>Destinations</h2>{destinations}
<h2>Counts</h2>{counts}
<h2>Latest units</h2>{units}
<h2>Latest jobs</h2>{jobs}
<h2>Latest deliveries</h2>{deliveries}
<h2>Time per stage</h2>{timings}
</body></html>
"""


def _html_table(header: list[str], rows: list[list[Any]], state_col: int | None = None) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r in rows:
        cls = f' class="{html.escape(str(r[state_col]))}"' if state_col is not None else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _headline(healthy: bool, reasons: Sequence[str]) -> tuple[str, str]:
    """(words, CSS class): UNHEALTHY (not live), degraded (something failed), else healthy."""
    if not healthy:
        return "UNHEALTHY", "bad"
    if reasons:
        return "degraded", "warn"
    return "healthy", "ok"


def status_page(ledger: Ledger, metrics: Metrics, healthy: bool, latest: int = 20,
                *, destinations: Iterable[str] = ()) -> str:
    """The node's status as a small self-refreshing HTML page (UIDs and AE titles only, no PHI)."""
    snap = status_snapshot(ledger, destinations)
    health, health_class = _headline(healthy, snap["reasons"])
    reasons = ("<ul>" + "".join(f'<li class="{health_class}">{html.escape(r)}</li>' for r in snap["reasons"])
               + "</ul>") if snap["reasons"] else ""
    dests = [[name, d["state"], _when(d["since"]), _when(d["last_ok_at"]), _when(d["last_probe_at"]),
              d["last_error"] or ""] for name, d in snap["destinations"].items()]
    counts = [[kind, ", ".join(f"{k} {v}" for k, v in sorted(snap[kind].items())) or "none"]
              for kind in ("units", "series", "jobs", "deliveries")]
    units = [[u.uid, u.kind, u.state.value, u.instance_count, u.route or "-", _when(u.last_received_at),
              u.reason or ""] for u in ledger.units()[-latest:][::-1]]
    jobs = [[j.id, j.unit_uid, j.model_name, j.state.value, j.attempts, _when(j.updated_at),
             j.last_error or ""] for j in ledger.jobs()[-latest:][::-1]]
    deliveries = [[d.id, d.job_id, d.destination, os.path.basename(d.dataset_path), d.state.value,
                   d.attempts, _when(d.updated_at), d.last_error or ""]
                  for d in ledger.deliveries()[-latest:][::-1]]
    timings = [[stage, int(t["count"]), f"{t['sum'] / max(t['count'], 1):.3f}"]
               for stage, t in sorted(metrics.snapshot()["timings"].items())]
    return _PAGE.format(
        health=health, health_class=health_class, reasons=reasons,
        instances=snap["instances"], queue=snap["queue_depth"],
        destinations=_html_table(["destination", "state", "since", "last answered", "last probe",
                                  "last error"], dests, 1),
        counts=_html_table(["what", "by state"], counts),
        units=_html_table(["unit", "kind", "state", "instances", "route", "last received", "reason"], units, 2),
        jobs=_html_table(["job", "unit", "model", "state", "tries", "updated", "last error"], jobs, 3),
        deliveries=_html_table(["id", "job", "destination", "file", "state", "tries", "updated",
                                "last error"], deliveries, 4),
        timings=_html_table(["stage", "count", "mean s"], timings),
    )


def _gauges(status: dict[str, Any]) -> dict[str, float]:
    g: dict[str, float] = {"queue_depth": status["queue_depth"], "instances_in_ledger": status["instances"]}
    for kind in ("units", "jobs", "deliveries"):
        for state, n in status[kind].items():
            g[f'{kind}|state="{state}"'] = n
    for name, d in status["destinations"].items():
        g[f'destination_up|destination="{_label(name)}"'] = 1.0 if d["state"] == DestinationState.UP.value else 0.0
    return g


def _label(value: str) -> str:
    """A Prometheus label value, escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class StatusServer:
    """``/`` the status page, ``/status`` JSON, ``/metrics`` Prometheus text, ``/healthz``
    (liveness: 200 when the node runs), ``/readyz`` (200 "ready", or 503 with the reasons
    when unhealthy or degraded). ``destinations``: the configured destination names."""

    def __init__(self, bind: str, port: int, ledger: Ledger, metrics: Metrics,
                 healthy: Callable[[], bool], *, destinations: Sequence[str] = ()) -> None:
        ledger_, metrics_, healthy_, dests_ = ledger, metrics, healthy, tuple(destinations)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                try:
                    if self.path == "/healthz":
                        ok = healthy_()
                        self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"unhealthy\n")
                    elif self.path == "/readyz":
                        code, text = readiness(healthy_(), status_snapshot(ledger_, dests_)["reasons"])
                        self._send(code, "text/plain; charset=utf-8", text.encode())
                    elif self.path == "/metrics":
                        body = metrics_.render(_gauges(status_snapshot(ledger_, dests_))).encode()
                        self._send(200, "text/plain; version=0.0.4", body)
                    elif self.path == "/status":
                        body = json.dumps(status_snapshot(ledger_, dests_), indent=2).encode()
                        self._send(200, "application/json", body)
                    elif self.path == "/":
                        body = status_page(ledger_, metrics_, healthy_(), destinations=dests_).encode()
                        self._send(200, "text/html; charset=utf-8", body)
                    else:
                        self._send(404, "text/plain", b"not found\n")
                except Exception:
                    LOG.exception("status page failed")
                    self._send(500, "text/plain", b"error\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                LOG.debug("http: " + format, *args)

        self.httpd = ThreadingHTTPServer((bind, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="status-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def readiness(healthy: bool, reasons: Sequence[str]) -> tuple[int, str]:
    """/readyz's answer: (200, "ready") or (503, "unhealthy" | "degraded" and the reasons)."""
    if not healthy:
        return 503, "unhealthy\n"
    if reasons:
        return 503, "degraded\n" + "".join(f"{r}\n" for r in reasons)
    return 200, "ready\n"


def sd_notify(message: str) -> bool:
    """Send a systemd notification (READY=1, WATCHDOG=1, STOPPING=1, STATUS=...).

    Does nothing (returns False) when not run by systemd with ``Type=notify``.
    """
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError as exc:
        LOG.warning("systemd notify failed: %s", exc)
        return False


def watchdog_interval() -> float | None:
    """Half the systemd watchdog period (seconds), or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


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
