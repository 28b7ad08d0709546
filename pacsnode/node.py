"""The node: config → spool, ledger, scheduler, completeness, receiver, status page.

``Node(settings).start()`` resumes whatever the ledger shows mid-way, then listens;
``stop()`` stops accepting, lets associations in flight finish, and shuts the scheduler
down cleanly. :meth:`Node.run` does both around SIGTERM / SIGINT for ``pacsnode serve``.

A routed unit's job runs the :class:`~pacsnode.processor.Processor` (volumes → model →
SEG / SR → outbox rows) and the :class:`~pacsnode.dispatcher.Dispatcher` sends the outbox
to the destinations. ``Node(settings, work=fn)`` replaces the processing with any
``fn(job: JobRow) -> result paths`` (tests use it to make a job fail on purpose).

With a ``[cluster]`` section the ledger and the scheduler are PostgreSQL's and procrastinate's
(:mod:`pacsnode.cluster`), and ``roles`` says what this process does: ``receiver`` (the SCP and
STOW-RS, spool and ledger rows, the units' timers) and/or ``worker`` (completeness, routing,
deliveries and model jobs taken from the cluster's queue). Embedded, a node holds both.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom

from pacsnode.audit import AuditTrail
from pacsnode.config import Settings
from pacsnode.dispatcher import DELIVERY_HANDLER, PROBE_HANDLER, Dispatcher
from pacsnode.errors import LedgerError, ModelError
from pacsnode.inference.model import resolve_model_path
from pacsnode.ledger import InstanceRecord, Ledger, SeriesAttributes
from pacsnode.ops import (
    Metrics,
    NodeFacts,
    StatusServer,
    count_job_failures,
    retention_sweep,
    sd_notify,
    status_snapshot,
    watchdog_interval,
)
from pacsnode.processor import Processor
from pacsnode.receive import Receiver, Spool, StorageSCP
from pacsnode.receive.stow import Credentials, StowServer
from pacsnode.routing import route_unit
from pacsnode.scheduler import (
    JOB_HANDLER,
    JobRunner,
    JobWork,
    Scheduler,
    job_timer_id,
    register_handler,
    unregister_handler,
)
from pacsnode.series import STABLE_HANDLER, Completeness
from pacsnode.states import JobState, SeriesState

__all__ = ["Node", "model_sha256", "RETENTION_HANDLER"]

LOG = logging.getLogger(__name__)

RETENTION_HANDLER = "retention"
UPKEEP_HANDLER = "upkeep"
UPKEEP_SECONDS = 15.0

_DIGESTS: dict[tuple[str, float, int], str] = {}


def model_sha256(file: str) -> str:
    """sha256 of a model file (``builtin:NAME`` or a path; cached by path, mtime and size). A
    model that cannot be found yet is keyed by its name instead, so the ledger still has a
    stable job key; the job itself will fail and say why."""
    try:
        path = resolve_model_path(file)
        st = path.stat()
    except (ModelError, OSError):
        return hashlib.sha256(f"unresolved:{file}".encode()).hexdigest()
    key = (str(path), st.st_mtime, st.st_size)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


class Node:
    """One running pacsnode."""

    def __init__(self, settings: Settings, *, work: JobWork | None = None,
                 roles: frozenset[str] = frozenset({"receiver", "worker"})) -> None:
        self.settings = settings
        self.roles = roles
        cluster = settings.cluster
        state_dir = Path(settings.node.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = Metrics()
        self.facts = NodeFacts.from_settings(settings)
        self.spool = Spool(state_dir, fsync=settings.node.fsync, journal=settings.node.spool_journal,
                           min_free_mb=settings.node.min_free_disk_mb, on_restored=self._files_restored,
                           root=cluster.spool_dir if cluster is not None else None)
        self.ledger: Ledger
        self.scheduler: Any
        if cluster is None:
            self.ledger = Ledger(state_dir / "ledger.sqlite")
            self.scheduler = Scheduler(state_dir, settings.scheduler)
        else:
            from pacsnode.cluster import open_cluster

            self.ledger, self.scheduler = open_cluster(settings)
        self.dispatcher = Dispatcher(settings, self.ledger, self.scheduler, observe=self.metrics.observe,
                                     count=self.metrics.inc)
        self.processor = Processor(
            settings, self.ledger, observe=self.metrics.observe,
            on_outputs=lambda job, ids: self.dispatcher.submit_rows([self.ledger.delivery(i) for i in ids]),
        )
        self.runner = JobRunner(self.ledger, self.scheduler, settings.scheduler,
                                count_job_failures(work or self.processor, self.metrics))
        self._warm_models = work is None  # the real processing loads its models at start, off the job path
        self._warm_thread: threading.Thread | None = None
        self.completeness = Completeness(self.ledger, self.scheduler, settings.series, self.unit_complete,
                                         not_ready=self._files_missing)
        self.receiver = Receiver(
            self.spool, self.ledger,
            unit_of=self.completeness.unit_of,
            on_recorded=self.completeness.instance_recorded,
            min_free_disk_mb=settings.node.min_free_disk_mb,
            metrics=self.metrics,
            fast_data_phase=settings.node.fast_data_phase,
        )
        self.scp = StorageSCP(settings, self.receiver)
        self.audit = AuditTrail(settings)  # ATNA: [audit]; never raises into the node
        self.receiver.audit = self.audit
        self.scp.gate.on_tls_failure = self.audit.tls_failure
        self.dispatcher.on_sent = self.audit.results_sent
        self.status_server: StatusServer | None = None
        self.stow: StowServer | None = None
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._started = False
        self.on_complete_hooks: list[Callable[[str, int], None]] = []
        self.worker: Any = None
        if cluster is not None:
            from pacsnode.cluster.roles import join_cluster

            join_cluster(self, cluster)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        register_handler(STABLE_HANDLER, self.completeness.fired)
        register_handler(JOB_HANDLER, self.runner.run)
        register_handler(RETENTION_HANDLER, self.retention)
        register_handler(DELIVERY_HANDLER, self.dispatcher.deliver)
        register_handler(PROBE_HANDLER, self.dispatcher.probe)
        register_handler(UPKEEP_HANDLER, self.upkeep)
        self.spool.open()
        receiver = "receiver" in self.roles
        if receiver:
            self.reindex()
        if self._warm_models and "worker" in self.roles:
            self._warm_thread = threading.Thread(target=self.processor.warm_up, name="warm-up", daemon=True)
            self._warm_thread.start()
        self.scheduler.start()
        self.resume()
        self.scheduler.every("retention", self.settings.retention.interval_minutes * 60, RETENTION_HANDLER)
        self.scheduler.every("upkeep", UPKEEP_SECONDS, UPKEEP_HANDLER)
        self.audit.start()
        if receiver:
            self.scp.start()
            self.stow = _start_stow(self.settings, self.receiver)
        if self.worker is not None:
            self.worker.start()
        m = self.settings.metrics
        if m.port:
            self.status_server = StatusServer(m.bind_address, m.port, self.ledger, self.metrics, self.healthy,
                                              destinations=tuple(self.settings.destinations), facts=self.facts)
            self.status_server.start()
        self._started = True
        sd_notify("READY=1\nSTATUS=receiving")
        interval = watchdog_interval()
        if interval:
            self._watchdog = threading.Thread(target=self._pet_watchdog, args=(interval,),
                                              name="watchdog", daemon=True)
            self._watchdog.start()

    def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let associations in flight finish (up to ``grace`` s), stop the
        scheduler after its running jobs, close the ledger."""
        if not self._started:
            return
        self._started = False
        self._stop.set()
        sd_notify("STOPPING=1")
        if self.scp.server is not None:
            LOG.info("stopping: no new associations; waiting for %d in flight", len(self.scp.active()))
            self.scp.stop(grace)
        if self.worker is not None:
            self.worker.stop(grace)
        if self.stow is not None:
            self.stow.stop()
        self.scheduler.shutdown(wait=True)
        if self._warm_thread is not None:  # never leave the interpreter while a model is compiling
            self._warm_thread.join(grace)
        self.spool.close()
        if self.status_server is not None:
            self.status_server.stop()
        for name in (STABLE_HANDLER, JOB_HANDLER, RETENTION_HANDLER, UPKEEP_HANDLER, DELIVERY_HANDLER,
                     PROBE_HANDLER):
            unregister_handler(name)
        self.audit.stop()
        self.ledger.close()
        LOG.info("stopped")

    def run(self, grace: float = 30.0) -> None:
        """Start, serve until SIGTERM or SIGINT, stop cleanly."""
        stop = threading.Event()

        def _signal(signum: int, _frame: Any) -> None:
            LOG.info("signal %s received", signal.Signals(signum).name)
            stop.set()

        old = {s: signal.signal(s, _signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not stop.wait(1.0):
                pass
        finally:
            self.stop(grace)
            for s, h in old.items():
                signal.signal(s, h)

    def healthy(self) -> bool:
        try:
            self.ledger.instance_count()
        except Exception:
            return False
        if self.settings.cluster is not None:
            return (self._started and ("receiver" not in self.roles or self.scp.server is not None)
                    and (self.worker is None or self.worker.running))
        return self._started and self.scheduler.aps.running and self.scp.server is not None

    def _pet_watchdog(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if self.healthy():
                sd_notify("WATCHDOG=1")

    # --- recovery -----------------------------------------------------------------------------

    def reindex(self) -> int:
        """Record spool files the ledger lacks (a power cut after fsync, before commit)."""
        known = self.ledger.known_paths()
        n = 0
        for path in self.spool.files():
            if str(path) in known:
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                rec = InstanceRecord(
                    sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                    series_uid=str(ds.SeriesInstanceUID), study_uid=str(ds.StudyInstanceUID),
                    path=path, size=path.stat().st_size,
                    transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                )
                attrs = SeriesAttributes(
                    modality=str(ds.get("Modality", "")), series_description=str(ds.get("SeriesDescription", "")),
                    body_part=str(ds.get("BodyPartExamined", "")),
                    image_type=tuple(str(v) for v in (ds.get("ImageType") or [])),
                    sop_class_uid=str(ds.SOPClassUID),
                )
            except Exception as exc:
                LOG.warning("spool file %s cannot be re-indexed (%s); left in place", path, exc)
                continue
            unit_uid, kind = self.completeness.unit_of(rec.study_uid, rec.series_uid)
            outcome = self.ledger.record_instance(rec, attrs, unit_uid=unit_uid, unit_kind=kind)
            n += outcome.stored
        if n:
            LOG.warning("re-indexed %d spool files missing from the ledger", n)
        return n

    def resume(self) -> None:
        """Pick up whatever the ledger shows mid-way."""
        if self.settings.cluster is not None:
            from pacsnode.cluster.roles import resume_cluster

            resume_cluster(self)
            return
        armed = self.completeness.resume()
        completed = self.ledger.units([SeriesState.COMPLETE])
        for u in completed:
            self.unit_complete(u.uid, u.generation)
        requeued = 0
        for job in self.ledger.jobs([JobState.RUNNING]):
            self.ledger.requeue_job(job.id)
            requeued += 1
        waiting = self.ledger.jobs([JobState.QUEUED, JobState.RETRY])
        for job in waiting:
            at = job.next_attempt_at if job.state is JobState.RETRY else None
            if not self.scheduler.has(job_timer_id(job.id)) or job.state is JobState.QUEUED:
                self.runner.submit(job.id, at)
        outbox = self.dispatcher.resume()
        LOG.info("resumed: %d units receiving, %d complete routed, %d running jobs re-queued, "
                 "%d jobs waiting, %d deliveries pending", armed, len(completed), requeued, len(waiting),
                 outbox)

    def _files_missing(self, unit_uid: str) -> str | None:
        """Why a quiet unit may not complete yet: instance files not in the spool (a write
        after Success failed, e.g. disk full; the spool journal puts them back)."""
        paths = self.ledger.instance_paths(unit_uid)
        missing = sum(1 for p in paths if not p.is_file())
        if missing:
            return (f"{missing} of {len(paths)} instance files are not in the spool yet (the spool "
                    f"journal restores them once space returns)")
        return None

    def _files_restored(self, paths: list[Path]) -> None:
        """The journal put instance files back: a job that failed meanwhile runs again."""
        restored = {str(p) for p in paths}
        for job in self.ledger.jobs([JobState.FAILED]):
            if restored & {str(p) for p in self.ledger.instance_paths(job.unit_uid)}:
                self.ledger.requeue_job(job.id)
                self.runner.submit(job.id)
                LOG.warning("job %s re-queued: instance files of unit %s were restored", job.id, job.unit_uid)

    # --- stages -------------------------------------------------------------------------------

    def unit_complete(self, unit_uid: str, generation: int) -> None:
        """A unit is complete: route it, then queue its job (or record it as ignored)."""
        t0 = time.perf_counter()
        try:
            members = [(s.series_uid, s.attributes) for s in self.ledger.series(unit_uid)]
            chosen = route_unit(members, self.settings.routes)
            if chosen is None:
                described = "; ".join(
                    f"{a.modality or '-'} {a.series_description!r}" for _, a in members[:4])
                self.ledger.set_unit_state(unit_uid, SeriesState.IGNORED,
                                           reason=f"no route matches ({described})")
                LOG.info("unit %s ignored: no route matches", unit_uid)
            else:
                route = chosen.route
                job = self.ledger.queue_job(unit_uid, route=route.name, model_name=route.model,
                                            model_sha256=model_sha256(self.settings.model_file(route.model)))
                LOG.info("unit %s routed to %s: job %d queued", unit_uid, route.name, job.id)
                self.runner.submit(job.id)
        except LedgerError as exc:
            # Reopened by a late instance meanwhile: its next completion routes it.
            LOG.info("unit %s not routed now: %s", unit_uid, exc)
            return
        finally:
            self.metrics.observe("route", time.perf_counter() - t0)
        for hook in self.on_complete_hooks:
            hook(unit_uid, generation)

    def upkeep(self) -> None:
        """Schedule queued jobs that have no timer (e.g. `pacsnode jobs retry` from another
        process wrote only the ledger)."""
        for job in self.ledger.jobs([JobState.QUEUED]):
            if not self.scheduler.has(job_timer_id(job.id)):
                self.runner.submit(job.id)
        self.dispatcher.resume()

    def retention(self) -> None:
        retention_sweep(self.ledger, self.spool, self.settings.retention)

    def status(self) -> dict[str, Any]:
        return status_snapshot(self.ledger, self.settings.destinations, facts=self.facts)

    def degraded_reasons(self) -> list[str]:
        """Why the node is degraded, one line each (empty when it is not): a destination down
        since when and why, deliveries dead-lettered, jobs failed. :meth:`healthy` stays the
        liveness answer; this is readiness (``/readyz``)."""
        return list(self.status()["reasons"])


def _start_stow(settings: Settings, receiver: Receiver) -> StowServer | None:
    """The STOW-RS endpoint, when [dicomweb] port is set: the same door as C-STORE."""
    web = settings.dicomweb
    if not web.port:
        return None
    stow = StowServer(web.bind_address, web.port, web.root, Credentials(web.users_file, web.tokens_file),
                      receiver.store, max_request_mb=web.max_request_mb,
                      tls=(web.tls_cert, web.tls_key) if web.tls_cert and web.tls_key else None)
    stow.start()
    return stow
