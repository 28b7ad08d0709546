"""The node's metrics, exposed through prometheus-client.

:class:`Metrics` keeps counters (``inc``), failures by stage and cause (``failure``) and a
histogram of stage durations (``observe``) in one lock, and renders them with
prometheus-client's text exposition beside the process and Python collectors of a registry
of its own (no global registry: two nodes in one process never share counts). The status
families (ledger gauges, destination up, model info) come from the status snapshot at each
scrape (:mod:`pacsnode.ops.status_metrics`).

Every family has one HELP and one TYPE line and every known state is present at zero.
Integral values print as integers (``1234567``, not ``1.234567e+06``), so counters stay
exact to the last unit whatever their size.
"""

from __future__ import annotations

import errno
import platform
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from pacsnode import __version__
from pacsnode.errors import InferenceError, ModelError, PacsnodeError, ResultsError, VolumeError

__all__ = ["Metrics", "STAGES", "STAGE_BUCKETS", "FAILURE_CAUSES", "job_failure_cause", "count_job_failures",
           "status_families"]

STAGES = ("receive", "route", "inference", "results", "delivery")
"""The stages timed by ``observe`` (each present in the histogram from the start)."""

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                 60.0, 120.0, 300.0, 600.0)
"""Upper bounds (s): one instance received in milliseconds up to a long inference in minutes."""

_COUNTERS = {
    "instances_received_total": "Instances stored (first copy only)",
    "instances_duplicate_total": "Instances received again and not stored twice",
    "instances_failed_total": "C-STORE requests answered with a failure status",
    "instances_out_of_resources_total": "C-STORE requests answered A700 (out of resources: no disk space)",
    "bytes_received_total": "Bytes of instances stored",
    "associations_accepted_total": "Associations accepted",
    "associations_rejected_total": "Associations rejected (called AE, calling AE or address not allowed, "
                                   "or a malformed request)",
    "connections_refused_total": "Connections closed at once: over node.max_pending_connections or "
                                 "node.max_pending_per_address",
    "artim_expired_total": "Connections closed because no A-ASSOCIATE-RQ came within node.artim_timeout",
    "malformed_pdus_total": "Connections aborted for a malformed PDU",
    "deliveries_dead_lettered_total": "Deliveries failed for good past delivery.horizon_hours (dead letter)",
    "delivery_attempts_unreachable_total": "Delivery attempts that found the destination unreachable",
    "delivery_attempts_refused_total": "Results a destination answered but did not store",
}

_FAILURE_OF = {
    "associations_rejected_total": ("receive", "association_rejected"),
    "connections_refused_total": ("receive", "connection_refused"),
    "artim_expired_total": ("receive", "artim_expired"),
    "malformed_pdus_total": ("receive", "malformed_pdu"),
    "instances_failed_total": ("receive", "instance_refused"),
    "delivery_attempts_unreachable_total": ("delivery", "unreachable"),
    "delivery_attempts_refused_total": ("delivery", "refused"),
    "deliveries_dead_lettered_total": ("delivery", "dead_lettered"),
}
"""Counters that are failures: each also counts in ``pacsnode_failures_total{stage, cause}``."""

_JOB_CAUSES = ("volume", "model", "inference", "results", "no_space", "other")

FAILURE_CAUSES: tuple[tuple[str, str], ...] = (
    *dict.fromkeys(_FAILURE_OF.values()), *(("job", c) for c in _JOB_CAUSES))
"""Every (stage, cause) of ``pacsnode_failures_total``, each present at zero."""


def job_failure_cause(exc: BaseException) -> str:
    """The ``cause`` label of a failed job attempt: no_space (ENOSPC or EDQUOT anywhere in
    the chain), else the first pacsnode error's stage (volume, model, inference, results),
    else other."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if any(isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT) for x in chain):
        return "no_space"
    for x in chain:
        for cls, cause in ((VolumeError, "volume"), (ModelError, "model"), (InferenceError, "inference"),
                           (ResultsError, "results")):
            if isinstance(x, cls):
                return cause
        if isinstance(x, PacsnodeError):
            break
    return "other"


def count_job_failures(work: Callable[[Any], Any], metrics: Metrics) -> Callable[[Any], Any]:
    """``work`` (a job's work function) that counts each failed attempt in ``metrics`` as
    ``failures_total{stage="job", cause=...}`` and re-raises it."""

    def counted(job: Any) -> Any:
        try:
            return work(job)
        except Exception as exc:
            metrics.failure("job", job_failure_cause(exc))
            raise

    return counted


class Metrics:
    """Thread-safe counters (``inc``), failures (``failure``) and stage timings (``observe``),
    rendered in the Prometheus text format by :meth:`render`."""

    def __init__(self, *, process: bool = True) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, float] = defaultdict(float)
        self._failures: dict[tuple[str, str], float] = defaultdict(float)
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = defaultdict(float)
        for stage in STAGES:
            self._buckets[stage] = [0] * (len(STAGE_BUCKETS) + 1)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Families(self))
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def inc(self, name: str, value: float = 1.0) -> None:
        """Add ``value`` to counter ``name`` (e.g. ``instances_received_total``)."""
        with self._lock:
            self._counters[name] += value
            if name in _FAILURE_OF:
                self._failures[_FAILURE_OF[name]] += value

    def failure(self, stage: str, cause: str, value: float = 1.0) -> None:
        """Count a failure in ``failures_total{stage, cause}``."""
        with self._lock:
            self._failures[(stage, cause)] += value

    def observe(self, stage: str, seconds: float) -> None:
        """One duration of ``stage`` into the ``stage_seconds`` histogram."""
        with self._lock:
            counts = self._buckets.setdefault(stage, [0] * (len(STAGE_BUCKETS) + 1))
            i = next((i for i, le in enumerate(STAGE_BUCKETS) if seconds <= le), len(STAGE_BUCKETS))
            counts[i] += 1
            self._sums[stage] += seconds

    def snapshot(self) -> dict[str, Any]:
        """{"counters": {name: n}, "failures": {"stage/cause": n}, "timings": {stage: {"count", "sum"}}}
        (timings of the stages that ran)."""
        with self._lock:
            return {
                "counters": dict(self._counters),
                "failures": {f"{s}/{c}": n for (s, c), n in self._failures.items()},
                "timings": {k: {"count": sum(v), "sum": self._sums[k]} for k, v in self._buckets.items() if sum(v)},
            }

    def families(self) -> list[Metric]:
        """The node's own families (counters, failures, stage histogram, build info)."""
        with self._lock:
            counters = dict(self._counters)
            failures = dict(self._failures)
            buckets = {k: list(v) for k, v in self._buckets.items()}
            sums = dict(self._sums)
        out: list[Metric] = []
        for name in sorted(set(_COUNTERS) | set(counters)):
            c = CounterMetricFamily(f"pacsnode_{name}", _COUNTERS.get(name, name.replace("_", " ")))
            c.add_metric([], counters.get(name, 0.0))
            out.append(c)
        f = CounterMetricFamily("pacsnode_failures", "Failures by stage and cause (receive: refused "
                                "connections, associations and instances; job: each failed attempt; "
                                "delivery: failed attempts and dead letters)", labels=["stage", "cause"])
        for key in sorted(set(FAILURE_CAUSES) | set(failures)):
            f.add_metric(list(key), failures.get(key, 0.0))
        out.append(f)
        h = HistogramMetricFamily("pacsnode_stage_seconds", "Time spent per stage (receive: one instance; "
                                  "route: one unit; inference and results: one job; delivery: one "
                                  "association)", labels=["stage"])
        for stage, counts in sorted(buckets.items()):
            cumulative, running = [], 0
            for le, n in zip((*(repr(b) for b in STAGE_BUCKETS), "+Inf"), counts, strict=True):
                running += n
                cumulative.append((le, running))
            h.add_metric([stage], cumulative, sums.get(stage, 0.0))
        out.append(h)
        info = InfoMetricFamily("pacsnode_build", "The running pacsnode: version and Python")
        info.add_metric([], {"version": __version__, "python": platform.python_version()})
        out.append(info)
        return out

    def render(self, extra: Iterable[Metric] = ()) -> str:
        """The Prometheus text exposition: this registry (node families, process, Python)
        followed by ``extra`` (the status families of one scrape)."""
        scrape = _Joined(self.registry, list(extra))
        return integral_values(generate_latest(scrape).decode())  # type: ignore[arg-type]


class _Joined:
    """One scrape: a registry's families, then fixed ones (prometheus-client's collector protocol)."""

    def __init__(self, registry: CollectorRegistry, extra: list[Metric]) -> None:
        self.registry, self.extra = registry, extra

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from self.extra


class _Families:
    """The registry's view of one :class:`Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics.families()


def integral_values(text: str) -> str:
    """Sample values that are whole numbers written as integers (prometheus-client writes
    ``3.0`` and ``1.234567e+06``); exact up to 2**53."""
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            try:
                v = float(value)
            except ValueError:
                v = float("nan")
            if v.is_integer() and abs(v) < 2**53:
                line = f"{head} {int(v)}"
        out.append(line)
    return "\n".join(out) + "\n"


_GAUGES = {
    "units": "Units (series or studies) in the ledger by state",
    "series": "Series in the ledger by state",
    "jobs": "Inference jobs in the ledger by state",
    "deliveries": "Deliveries in the outbox by state",
}


def status_families(snap: dict[str, Any]) -> list[Metric]:
    """The families drawn from a status snapshot: ledger counts by state, queue depth,
    destination up, degraded, free disk and model info."""
    out: list[Metric] = []
    for kind, text in _GAUGES.items():
        g = GaugeMetricFamily(f"pacsnode_{kind}", text, labels=["state"])
        for state, n in sorted(snap[kind].items()):
            g.add_metric([state], n)
        out.append(g)
    out.append(GaugeMetricFamily("pacsnode_queue_depth", "Jobs queued or waiting to retry",
                                 value=snap["queue_depth"]))
    out.append(GaugeMetricFamily("pacsnode_instances_in_ledger", "Instances recorded in the ledger",
                                 value=snap["instances"]))
    up = GaugeMetricFamily("pacsnode_destination_up", "1 when the destination answers, 0 while it is down "
                           "(probed by C-ECHO)", labels=["destination"])
    for name, d in snap["destinations"].items():
        up.add_metric([name], 1 if d["reachable"] else 0)
    out.append(up)
    out.append(GaugeMetricFamily("pacsnode_degraded", "1 while the node is degraded (see /readyz for why)",
                                 value=1 if snap["reasons"] else 0))
    if snap.get("disk"):
        out.append(GaugeMetricFamily("pacsnode_free_disk_bytes", "Free space on the state directory's file system",
                                     value=snap["disk"]["free_bytes"]))
        out.append(GaugeMetricFamily("pacsnode_min_free_disk_bytes", "node.min_free_disk_mb: below it instances "
                                     "are refused", value=snap["disk"]["min_free_bytes"]))
    info = InfoMetricFamily("pacsnode_model", "Configured models: the card's name and version and the file's "
                            "sha256 (loaded 0 when the file cannot be loaded)", labels=["model"])
    for name, m in snap["models"].items():
        info.add_metric([name], {"name": m["name"] or "", "version": m["version"] or "",
                                 "sha256": m["sha256"] or "", "loaded": "0" if m["error"] else "1"})
    out.append(info)
    return out
