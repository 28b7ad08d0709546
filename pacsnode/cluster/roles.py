"""A node in a cluster: what changes from the embedded node, and the cluster's upkeep.

:func:`join_cluster` adapts a :class:`~pacsnode.node.Node` built over a ``[cluster]`` section:
every stage reads the database clock; results go to the shared ``results_dir``, one folder per
start of a job, and only the start that still holds a job queues its outbox rows; a receiver's
timers are armed in the transaction that records the instance (no second write); a process with
the worker role runs a :class:`~pacsnode.cluster.worker.ClusterWorker`.

:func:`upkeep` (at start, and as the cluster's one ``upkeep`` item every 15 s) repairs what a
crash between two transactions can leave: a receiving unit without its timer, a complete unit
that was never routed, a queued job or pending delivery without its queue item, a running job
whose item is gone (its worker hit a database restart): fenced and queued again. It never
re-queues a job another worker is running (stalled items are :func:`recover_stalled`'s).
"""

from __future__ import annotations

import logging
from typing import Any

from pacsnode.cluster.queue import job_timer, stable_timer
from pacsnode.cluster.worker import ClusterWorker
from pacsnode.series import STABLE_HANDLER
from pacsnode.states import JobState, SeriesState

__all__ = ["join_cluster", "upkeep", "resume_cluster"]

LOG = logging.getLogger(__name__)


def join_cluster(node: Any, cluster: Any) -> None:
    """Adapt a freshly built node to the cluster (see the module's docstring)."""
    clock = node.ledger.db_now
    node.completeness.clock = clock
    node.completeness._up_since = 0.0  # receivers come and go; the unit's own activity decides
    node.runner.clock = clock
    node.dispatcher.clock = clock
    node.processor.results_dir = cluster.results_dir
    node.processor.per_attempt = True
    node.receiver.on_recorded = _timer_armed_in_transaction
    node.upkeep = lambda: upkeep(node)
    if "worker" in node.roles:
        node.worker = ClusterWorker(node.ledger, stall_seconds=cluster.stall_seconds,
                                    inference_threads=node.settings.scheduler.workers)


def _timer_armed_in_transaction(_outcome: Any) -> None:
    """PgLedger.record_instance armed the unit's timer with the instance's row."""


def resume_cluster(node: Any) -> None:
    upkeep(node)


def upkeep(node: Any) -> None:
    """Repair what a crash between two transactions left (see the module's docstring)."""
    ledger, scheduler = node.ledger, node.scheduler
    stable = node.settings.series.stable_seconds
    stall = node.settings.cluster.stall_seconds
    now = ledger.db_now()
    armed = 0
    for u in ledger.units([SeriesState.RECEIVING]):
        if not scheduler.has(stable_timer(u.uid)):
            scheduler.arm(stable_timer(u.uid), max(u.last_received_at + stable, now), STABLE_HANDLER, u.uid,
                          executor="timers")
            armed += 1
    routed = 0
    for u in ledger.units([SeriesState.COMPLETE]):
        if now - u.updated_at > 2 * stable:
            node.unit_complete(u.uid, u.generation)
            routed += 1
    fenced = 0
    for job in ledger.jobs([JobState.RUNNING]):
        if now - job.updated_at > stall and not scheduler.has(job_timer(job.id)):
            if ledger.fence_job(job.id, job.starts, "its queue item was lost (a worker or the database "
                                "restarted while it ran); queued again", now=now) is not None:
                fenced += 1
    submitted = 0
    for job in ledger.jobs([JobState.QUEUED, JobState.RETRY]):
        if not scheduler.has(job_timer(job.id)):
            node.runner.submit(job.id, job.next_attempt_at if job.state is JobState.RETRY else None)
            submitted += 1
    outbox = node.dispatcher.resume()
    if armed or routed or fenced or submitted or outbox:
        LOG.warning("cluster upkeep: %d timers re-armed, %d complete units routed, %d running jobs without "
                    "a worker queued again, %d jobs and %d deliveries given queue items", armed, routed,
                    fenced, submitted, outbox)
