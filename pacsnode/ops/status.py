"""The node's status as one JSON-able snapshot: what ``/status`` returns, what the status page
and the status families of ``/metrics`` are drawn from, and whether the node is degraded.

:func:`status_snapshot` reads the ledger (counts with every state present, the latest
units, jobs and deliveries with short UIDs and their study and series descriptions, every
failure with the exact command that retries it) and adds the :class:`NodeFacts` (version,
uptime, free disk, models with version and sha256, destinations with their peer).
:func:`degraded_reasons` says why the node is degraded, one line each.
"""

from __future__ import annotations

import shlex
import shutil
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacsnode import __version__
from pacsnode.delivery.outbox import down_reason
from pacsnode.ledger import Ledger
from pacsnode.states import DeliveryState, DestinationState, JobState, SeriesState

if TYPE_CHECKING:
    from pacsnode.config import Settings

__all__ = ["NodeFacts", "status_snapshot", "degraded_reasons", "readiness", "model_info", "short_uid"]


@dataclass(frozen=True)
class NodeFacts:
    """What the status tells beside the ledger, fixed when the node starts."""

    started_at: float = field(default_factory=time.time)
    version: str = __version__
    ae_title: str = ""
    state_dir: Path | None = None
    min_free_disk_mb: int = 0
    models: Mapping[str, str] = field(default_factory=dict)  # name → file (path or builtin:NAME)
    peers: Mapping[str, str] = field(default_factory=dict)  # destination → "AE@host:port" or URL
    config_path: str | None = None  # for the retry commands

    @classmethod
    def from_settings(cls, settings: Settings, started_at: float | None = None) -> NodeFacts:
        peers = {name: (d.url if d.kind == "dicomweb" else f"{d.ae_title}@{d.host}:{d.port}")
                 for name, d in settings.destinations.items()}
        return cls(started_at=time.time() if started_at is None else started_at, ae_title=settings.node.ae_title,
                   state_dir=Path(settings.node.state_dir), min_free_disk_mb=settings.node.min_free_disk_mb,
                   models={name: settings.model_file(name) for name in settings.models}, peers=peers,
                   config_path=str(settings.source.resolve()) if settings.source is not None else None)


def short_uid(uid: str, keep: int = 12) -> str:
    """The end of a UID (what tells series of one site apart), with "…" for what was left out."""
    return uid if len(uid) <= keep + 1 else "…" + uid[-keep:]


_MODELS: dict[tuple[str, float, int], dict[str, Any]] = {}
_MODELS_LOCK = threading.Lock()


def model_info(file: str) -> dict[str, Any]:
    """{"file", "name", "version", "sha256", "error"} of a model file (its card, loaded once per
    path, mtime and size); "error" is the one-line reason when it cannot be loaded."""
    from pacsnode.errors import ModelError
    from pacsnode.inference.model import Model, resolve_model_path

    info: dict[str, Any] = {"file": file, "name": None, "version": None, "sha256": None, "error": None}
    try:
        path = resolve_model_path(file)
        st = path.stat()
    except (ModelError, OSError) as exc:
        return {**info, "error": str(exc)}
    key = (str(path), st.st_mtime, st.st_size)
    with _MODELS_LOCK:
        if key not in _MODELS:
            try:
                m = Model.load(path, threads=1, backend="onnxruntime")  # the card only: no backend choice
                _MODELS[key] = {"name": m.card.name, "version": m.card.version, "sha256": m.sha256}
            except ModelError as exc:
                _MODELS[key] = {"error": str(exc)}
        return {**info, **_MODELS[key]}


_STUDY_DESCRIPTIONS: dict[str, str] = {}


def _study_description(ledger: Ledger, unit_uid: str) -> str:
    """StudyDescription of a unit, read once from its first instance file still in the spool."""
    if unit_uid in _STUDY_DESCRIPTIONS:
        return _STUDY_DESCRIPTIONS[unit_uid]
    import pydicom

    for path in ledger.instance_paths(unit_uid)[:1]:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyDescription"])
        except Exception:  # purged or unreadable: the page shows no description
            return ""
        if len(_STUDY_DESCRIPTIONS) > 10000:
            _STUDY_DESCRIPTIONS.clear()
        _STUDY_DESCRIPTIONS[unit_uid] = str(ds.get("StudyDescription", "") or "")
        return _STUDY_DESCRIPTIONS[unit_uid]
    return ""


class _Described:
    """Descriptions of units, looked up once per snapshot."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._units: dict[str, dict[str, Any]] = {}
        self._job_units: dict[int, str] = {}

    def unit(self, uid: str) -> dict[str, Any]:
        if uid not in self._units:
            series = sorted(self.ledger.series(uid), key=lambda s: (s.series_number is None, s.series_number or 0))
            self._units[uid] = {
                "unit_uid": uid, "short_uid": short_uid(uid),
                "study_description": _study_description(self.ledger, uid),
                "series": [{"uid": s.series_uid, "short_uid": short_uid(s.series_uid), "modality": s.modality,
                            "description": s.series_description, "instances": s.instance_count} for s in series],
            }
        return self._units[uid]

    def job_unit(self, job_id: int) -> dict[str, Any]:
        if job_id not in self._job_units:
            self._job_units[job_id] = self.ledger.job(job_id).unit_uid
        return self.unit(self._job_units[job_id])


def _retry(kind: str, ident: int, config: str | None) -> str:
    return f"pacsnode {kind} retry {ident}" + (f" --config {shlex.quote(config)}" if config else "")


def _counts(raw: Mapping[str, int], states: Iterable[str]) -> dict[str, int]:
    out = {s: 0 for s in states}
    out.update(raw)
    return out


def status_snapshot(ledger: Ledger, destinations: Iterable[str] = (), *, facts: NodeFacts | None = None,
                    latest: int = 20, now: float | None = None) -> dict[str, Any]:
    """The node's status (JSON-able): counts by state (every state present), the queue depth,
    each destination's state (the configured ``destinations`` or ``facts.peers`` and any the
    ledger knows; one never failed is up), the latest ``latest`` units, jobs and deliveries,
    every failed job and dead-lettered delivery with its retry command, the facts (version,
    uptime, free disk, models), and ``state`` "ok" or "degraded" with the ``reasons``."""
    now = time.time() if now is None else now
    facts = facts or NodeFacts(started_at=now)
    counts = ledger.counts()
    described = _Described(ledger)
    given = list(destinations)
    names = given + [n for n in facts.peers if n not in given]
    dests: dict[str, dict[str, Any]] = {
        name: {"state": DestinationState.UP.value, "since": None, "last_error": None, "last_ok_at": None,
               "last_probe_at": None} for name in names}
    for d in ledger.destinations():
        dests[d.name] = {"state": d.state.value, "since": d.since, "last_error": d.last_error,
                         "last_ok_at": d.last_ok_at, "last_probe_at": d.last_probe_at}
    for name, d in dests.items():
        d["peer"] = facts.peers.get(name)
        d["reachable"] = d["state"] == DestinationState.UP.value
    jobs = ledger.jobs()
    deliveries = ledger.deliveries()
    config = facts.config_path

    def job_json(j: Any) -> dict[str, Any]:
        return {"id": j.id, "model": j.model_name, "route": j.route, "state": j.state.value, "attempts": j.attempts,
                "updated_at": j.updated_at, "last_error": j.last_error, **described.unit(j.unit_uid),
                "retry": _retry("jobs", j.id, config) if j.state is JobState.FAILED else None}

    def delivery_json(d: Any) -> dict[str, Any]:
        return {"id": d.id, "job_id": d.job_id, "destination": d.destination, "file": Path(d.dataset_path).name,
                "state": d.state.value, "attempts": d.attempts, "updated_at": d.updated_at,
                "last_error": d.last_error, **described.job_unit(d.job_id),
                "retry": _retry("deliveries", d.id, config) if d.state is DeliveryState.FAILED else None}

    failed_jobs = [j for j in jobs if j.state is JobState.FAILED]
    dead = [d for d in deliveries if d.state is DeliveryState.FAILED]
    failures = sorted([{"kind": "job", **job_json(j)} for j in failed_jobs[-latest:]]
                      + [{"kind": "delivery", **delivery_json(d)} for d in dead[-latest:]],
                      key=lambda f: -f["updated_at"])
    snap: dict[str, Any] = {
        "version": facts.version,
        "ae_title": facts.ae_title,
        "started_at": facts.started_at,
        "uptime_seconds": max(0.0, now - facts.started_at),
        "disk": _disk(facts),
        "models": {name: model_info(file) for name, file in sorted(facts.models.items())},
        "units": _counts(counts["units"], SeriesState),
        "series": _counts(counts["series"], SeriesState),
        "jobs": _counts(counts["jobs"], JobState),
        "deliveries": _counts(counts["deliveries"], DeliveryState),
        "instances": counts["instances"]["total"],
        "pending_units": counts["units"].get(SeriesState.RECEIVING.value, 0),
        "queue_depth": counts["jobs"].get("queued", 0) + counts["jobs"].get("retry", 0),
        "destinations": dict(sorted(dests.items())),
        "failures": failures,
        "latest_units": [
            {"state": u.state.value, "kind": u.kind, "instances": u.instance_count, "route": u.route,
             "last_received_at": u.last_received_at, "reason": u.reason, **described.unit(u.uid)}
            for u in ledger.units()[-latest:][::-1]],
        "latest_jobs": [job_json(j) for j in jobs[-latest:][::-1]],
        "latest_deliveries": [delivery_json(d) for d in deliveries[-latest:][::-1]],
    }
    reasons = degraded_reasons(snap)
    snap["state"] = "degraded" if reasons else "ok"
    snap["reasons"] = reasons
    return snap


def _disk(facts: NodeFacts) -> dict[str, Any] | None:
    if facts.state_dir is None:
        return None
    try:
        usage = shutil.disk_usage(facts.state_dir)
    except OSError:
        return None
    return {"path": str(facts.state_dir), "free_bytes": usage.free, "total_bytes": usage.total,
            "min_free_bytes": facts.min_free_disk_mb * 1024 * 1024}


def _mb(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def degraded_reasons(snapshot: dict[str, Any]) -> list[str]:
    """Why the node is degraded, one line each (empty: it is not): destinations down since
    when and why, deliveries dead-lettered, jobs failed, free disk below the node's mark."""
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
    disk = snapshot.get("disk")
    if disk and disk["free_bytes"] < disk["min_free_bytes"]:
        reasons.append(f"free disk {_mb(disk['free_bytes'])} on {disk['path']} is below node.min_free_disk_mb = "
                       f"{disk['min_free_bytes'] // 2**20}: new instances are refused (A700) until space is freed")
    return reasons


def readiness(healthy: bool, reasons: list[str] | tuple[str, ...]) -> tuple[int, str]:
    """/readyz's answer: (200, "ready") or (503, "unhealthy" | "degraded" and the reasons)."""
    if not healthy:
        return 503, "unhealthy\n"
    if reasons:
        return 503, "degraded\n" + "".join(f"{r}\n" for r in reasons)
    return 200, "ready\n"
