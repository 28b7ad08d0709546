"""The status page (``/``): the status snapshot as HTML an operator can act on.

The headline says UNHEALTHY (not live), degraded (with the reasons) or healthy; then what
needs action (each failed job and dead-lettered delivery with the command that retries it),
destinations with reachability, models with version and sha256, counts, the latest units,
jobs and deliveries (short UIDs, study and series descriptions) and time per stage.

Every 5 s the page fetches itself and swaps its ``<main>`` in place, so the reader keeps
the scroll position (no reload). UIDs, AE titles and descriptions only: no patient data.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["render_page", "headline"]

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.text { white-space: pre-wrap; overflow-wrap: anywhere; max-width: 48em; }
code { font: 12px ui-monospace, monospace; background: #f6f8fa; padding: 1px 4px; user-select: all; }
.ok { color: #1a7f37; } .bad { color: #cf222e; } .warn { color: #9a6700; }
.failed, .down { background: #ffebe9; } .done, .sent, .up { background: #dafbe1; }
#refresh { color: #666; }
.uid { white-space: nowrap; }
"""

_SCRIPT = """
(function () {
  let busy = false;
  async function refresh() {
    if (busy) return false;
    busy = true;
    const note = document.getElementById("refresh");
    try {
      const r = await fetch(location.pathname, {cache: "no-store"});
      if (!r.ok) throw new Error("HTTP " + r.status);
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const x = window.scrollX, y = window.scrollY;
      document.getElementById("status").replaceWith(doc.getElementById("status"));
      document.title = doc.title;
      window.scrollTo(x, y);
      note.textContent = "refreshed at " + new Date().toLocaleTimeString() + "; every 5 s";
      return true;
    } catch (e) {
      note.textContent = "refresh failed (" + e.message + "); trying again in 5 s";
      return false;
    } finally {
      busy = false;
    }
  }
  window.pacsnodeRefresh = refresh;
  setInterval(refresh, 5000);
})();
"""


def headline(healthy: bool, reasons: Sequence[str]) -> tuple[str, str]:
    """(words, CSS class): UNHEALTHY (not live), degraded (something failed), else healthy."""
    if not healthy:
        return "UNHEALTHY", "bad"
    if reasons:
        return "degraded", "warn"
    return "healthy", "ok"


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _span(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


class _Cell(str):
    """HTML that goes into a cell as it is (already escaped)."""


def _text(v: Any) -> _Cell:
    """A long text (an error, a reason): whole, wrapped, never cut."""
    return _Cell(f'<td class="text">{_e(v)}</td>') if v else _Cell("<td></td>")


def _table(header: list[str], rows: list[list[Any]], state_col: int | None = None) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for r in rows:
        cls = f' class="{_e(r[state_col])}"' if state_col is not None else ""
        cells = "".join(v if isinstance(v, _Cell) else f"<td>{_e(v)}</td>" for v in r)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _uid(row: dict[str, Any]) -> _Cell:
    return _Cell(f'<td><span class="uid" title="{_e(row["unit_uid"])}">{_e(row["short_uid"])}</span></td>')


def _series(row: dict[str, Any]) -> str:
    return "; ".join(f"{s['modality'] or '-'} {s['description'] or '(no description)'}" for s in row["series"]) or "-"


def _retry(row: dict[str, Any]) -> _Cell:
    return _Cell(f"<td><code>{_e(row['retry'])}</code></td>") if row.get("retry") else _Cell("<td></td>")


def _facts(snap: dict[str, Any]) -> str:
    parts = [f"pacsnode {_e(snap['version'])}"]
    if snap.get("ae_title"):
        parts.append(f"AE title {_e(snap['ae_title'])}")
    parts.append(f"up {_span(snap['uptime_seconds'])} (since {_when(snap['started_at'])})")
    disk = snap.get("disk")
    if disk:
        low = ' class="bad"' if disk["free_bytes"] < disk["min_free_bytes"] else ""
        parts.append(f"<span{low}>free disk {_bytes(disk['free_bytes'])} of {_bytes(disk['total_bytes'])} on "
                     f"{_e(disk['path'])}</span> (instances are refused below {_bytes(disk['min_free_bytes'])})")
    parts.append(f"{snap['instances']} instances in the ledger; {snap['queue_depth']} jobs waiting")
    return '<p id="facts">' + " · ".join(parts) + "</p>"


def render_page(snap: dict[str, Any], healthy: bool, timings: dict[str, dict[str, float]]) -> str:
    """The page for one status snapshot (``timings``: :meth:`Metrics.snapshot`'s)."""
    word, cls = headline(healthy, snap["reasons"])
    reasons = ('<ul id="reasons">' + "".join(f'<li class="{cls}">{_e(r)}</li>' for r in snap["reasons"])
               + "</ul>") if snap["reasons"] else ""
    failures = [[f"{f['kind']} {f['id']}", _uid(f), f["study_description"] or "-", _series(f),
                 _when(f["updated_at"]), _text(f["last_error"]), _retry(f)] for f in snap["failures"]]
    dests = [[name, d["peer"] or "-", "yes" if d["reachable"] else f"no, down since {_when(d['since'])}",
              _when(d["last_ok_at"]), _when(d["last_probe_at"]), _text(d["last_error"]), d["state"]]
             for name, d in snap["destinations"].items()]
    models = [[name, m["name"] or "-", m["version"] or "-",
               _Cell(f"<td><code>{_e(m['sha256'])}</code></td>") if m["sha256"] else "-", m["file"],
               _text(m["error"])] for name, m in snap["models"].items()]
    counts = [[kind, ", ".join(f"{k} {v}" for k, v in snap[kind].items() if v) or "none"]
              for kind in ("units", "series", "jobs", "deliveries")]
    units = [[_uid(u), u["study_description"] or "-", _series(u), u["kind"], u["state"], u["instances"],
              u["route"] or "-", _when(u["last_received_at"]), _text(u["reason"])] for u in snap["latest_units"]]
    jobs = [[j["id"], _uid(j), j["study_description"] or "-", _series(j), j["model"], j["state"], j["attempts"],
             _when(j["updated_at"]), _text(j["last_error"]), _retry(j)] for j in snap["latest_jobs"]]
    deliveries = [[d["id"], d["job_id"], _uid(d), d["study_description"] or "-", _series(d), d["destination"],
                   d["file"], d["state"], d["attempts"], _when(d["updated_at"]), _text(d["last_error"]), _retry(d)]
                  for d in snap["latest_deliveries"]]
    stages = [[stage, int(t["count"]), f"{t['sum'] / max(t['count'], 1):.3f}"] for stage, t in sorted(timings.items())]
    main = "\n".join([
        f'<h1>pacsnode <span class="{cls}">{word}</span></h1>', reasons, _facts(snap),
        "<h2>Needs action</h2>",
        _table(["what", "unit", "study", "series", "when", "error", "retry with"], failures)
        if failures else "<p>nothing failed</p>",
        "<h2>Destinations</h2>",
        _table(["destination", "peer", "reachable", "last answered", "last probe", "last error", "state"],
               dests, 6),
        "<h2>Models</h2>", _table(["model", "card name", "version", "sha256", "file", "error"], models),
        "<h2>Counts</h2>", _table(["what", "by state"], counts),
        "<h2>Latest units</h2>",
        _table(["unit", "study", "series", "kind", "state", "instances", "route", "last received", "reason"],
               units, 4),
        "<h2>Latest jobs</h2>",
        _table(["job", "unit", "study", "series", "model", "state", "tries", "updated", "last error", "retry with"],
               jobs, 5),
        "<h2>Latest deliveries</h2>",
        _table(["id", "job", "unit", "study", "series", "destination", "file", "state", "tries", "updated",
                "last error", "retry with"], deliveries, 7),
        "<h2>Time per stage</h2>", _table(["stage", "count", "mean s"], stages),
    ])
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>pacsnode {word}</title>'
            f"<style>{_STYLE}</style></head><body>\n<main id=\"status\">\n{main}\n</main>\n"
            '<p><span id="refresh">refreshes every 5 s without reloading</span>. Also: '
            '<a href="/status">/status</a> (JSON), <a href="/metrics">/metrics</a>, '
            '<a href="/healthz">/healthz</a>, <a href="/readyz">/readyz</a>.</p>\n'
            f"<script>{_SCRIPT}</script>\n</body></html>\n")
