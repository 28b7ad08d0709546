"""A worker: takes the cluster's queue items and runs them through the node's handlers.

One procrastinate :class:`~procrastinate.App` in a thread of its own with two procrastinate
workers: ``control`` (completeness timers, routing, deliveries, probes, upkeep: a few threads)
and ``inference`` (model jobs: ``scheduler.workers`` threads). Each sends a heartbeat every
quarter of ``cluster.stall_seconds``.

Stalled items (:func:`recover_stalled`): an item whose worker has sent no heartbeat for
``stall_seconds`` (killed, frozen, cut off) is taken back by any other worker. A model job is
first *fenced* in the ledger (:meth:`~pacsnode.ledger.Ledger.fence_job`: one more start counted,
so the silent holder's finish is refused if it ever wakes up, and its pending deliveries
dropped) and queued again as a new item; any other item is queued again as it was (handlers are
idempotent). The old item keeps running without its locks, so a holder that wakes up ends it
quietly (it is deleted ten stall timeouts after its release).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

from sqlalchemy import text

from pacsnode.cluster.queue import CONTROL, INFERENCE, TASK, arm_in

__all__ = ["ClusterWorker", "recover_stalled"]

LOG = logging.getLogger(__name__)

_STALLED = text(
    "SELECT job.id, job.args, job.queue_name FROM procrastinate_jobs job "
    "LEFT JOIN procrastinate_workers w ON w.id = job.worker_id "
    "WHERE job.status = 'doing' AND job.lock IS NOT NULL AND (job.worker_id IS NULL OR "
    "w.last_heartbeat < now() - make_interval(secs => :s)) "
    "ORDER BY job.id FOR UPDATE OF job SKIP LOCKED")
RESTART_SECONDS = 1.0
# A silent worker's item stays 'doing' without its locks while a new copy runs (for a model job,
# after the ledger fenced it), so that a holder that wakes up ends its own item quietly; it is
# forgotten ten stall timeouts after its release (the release time is kept in scheduled_at, which
# a running item no longer uses).
_RELEASE = text("UPDATE procrastinate_jobs SET lock = NULL, queueing_lock = NULL, scheduled_at = now() "
                "WHERE id = :id")
_FORGET = text(
    "DELETE FROM procrastinate_jobs WHERE status = 'doing' AND lock IS NULL "
    "AND scheduled_at < now() - make_interval(secs => :s * 10)")


def recover_stalled(ledger: Any, stall_seconds: float) -> int:
    """Take back every item whose worker has been silent for ``stall_seconds``; returns how many."""
    n = 0
    with ledger.engine.begin() as c:
        for item_id, args, queue in c.execute(_STALLED, {"s": stall_seconds}).all():
            args = args if isinstance(args, dict) else json.loads(args)
            c.execute(_RELEASE, {"id": item_id})  # the old item runs on without its locks
            if args.get("handler") == "job":
                job_id = int(args["args"][0])
                held = ledger.job(job_id)
                fenced = ledger.fence_job(job_id, held.starts, "its worker stopped answering (stalled); "
                                          "taken over by another worker")
                LOG.warning("job %s: its worker stopped answering; %s", job_id,
                            "queued again for another worker" if fenced else "no longer running, released")
            else:  # a new copy of the item (or the waiting one, moved to now)
                arm_in(c, args["item"], None, args["handler"], args["args"], queue, every=args.get("every"))
                LOG.warning("queue item %s (%s) of a silent worker runs again", item_id, args.get("item"))
            n += 1
        c.execute(_FORGET, {"s": stall_seconds})
    return n


class ClusterWorker:
    """The worker role of a node: ``start()`` in a thread, ``stop(grace)`` waits for running items."""

    def __init__(self, ledger: Any, *, stall_seconds: float, inference_threads: int,
                 control_threads: int = 2) -> None:
        self.ledger = ledger
        self.stall_seconds = stall_seconds
        self.inference_threads = inference_threads
        self.control_threads = control_threads
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[Any] | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._recovery: threading.Thread | None = None
        self.restarts = 0

    # --- the task every item runs -------------------------------------------------------------

    def _run_item(self, context: Any, item: str, handler: str, args: list[Any], every: float | None) -> None:
        from pacsnode.scheduler import dispatch

        if every:
            with self.ledger.engine.begin() as c:
                at = float(c.execute(text("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8")).scalar_one())
                arm_in(c, item, at + every, handler, args, context.job.queue, every=every)
        dispatch(handler, *args)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="cluster-worker", daemon=True)
        self._thread.start()
        self._recovery = threading.Thread(target=self._recover_loop, name="cluster-recovery", daemon=True)
        self._recovery.start()
        self._ready.wait(30)
        if self._thread.is_alive():
            LOG.info("cluster worker started: queue control (%d threads), queue inference (%d threads), "
                     "stall timeout %g s", self.control_threads, self.inference_threads, self.stall_seconds)

    def _thread_main(self) -> None:
        """Run the procrastinate workers; when the database drops them (a restart, a failover)
        start them again, every ``RESTART_SECONDS`` until it answers, until :meth:`stop`."""
        while not self._stop.is_set():
            try:
                asyncio.run(self._amain())
            except Exception as exc:  # noqa: BLE001 - the database went away under the workers
                self.restarts += 1
                LOG.warning("the cluster worker lost the database (%s); starting it again in %g s",
                            _first_line(exc), RESTART_SECONDS)
                self._ready.set()
                self._stop.wait(RESTART_SECONDS)
            else:
                break
        self._ready.set()

    async def _amain(self) -> None:
        from procrastinate import App, PsycopgConnector

        app = App(connector=PsycopgConnector(conninfo=self.ledger.dsn, min_size=1, max_size=8))
        app.task(name=TASK, pass_context=True)(self._run_item)
        beat = max(0.5, self.stall_seconds / 4)
        common: dict[str, Any] = dict(install_signal_handlers=False, update_heartbeat_interval=beat,
                                      stalled_worker_timeout=self.stall_seconds, fetch_job_polling_interval=0.5,
                                      delete_jobs="successful")
        async with app.open_async():
            self._loop = asyncio.get_running_loop()
            self._main = asyncio.ensure_future(asyncio.gather(
                app.run_worker_async(queues=[CONTROL], concurrency=self.control_threads, name="control", **common),
                app.run_worker_async(queues=[INFERENCE], concurrency=self.inference_threads, name="inference",
                                     **common)))
            self._ready.set()
            try:
                await self._main
            except asyncio.CancelledError:
                pass

    def _recover_loop(self) -> None:
        while not self._stop.wait(max(0.5, self.stall_seconds / 4)):
            try:
                recover_stalled(self.ledger, self.stall_seconds)
            except Exception as exc:  # the database may be restarting: try again next round
                LOG.warning("stalled-item recovery skipped this round: %s", exc)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, grace: float = 30.0) -> None:
        self._stop.set()
        if self._loop is not None and self._main is not None:
            self._loop.call_soon_threadsafe(self._main.cancel)
        if self._thread is not None:
            self._thread.join(grace + 5)
        if self._recovery is not None:
            self._recovery.join(5)


def _first_line(exc: BaseException) -> str:
    """An exception's first non-empty line, or its cause's (procrastinate's wrapper says only
    "Database error.")."""
    for e in (exc, exc.__cause__, exc.__context__):
        text_ = (str(e).strip().splitlines() or [""])[0] if e is not None else ""
        if text_ and text_ != "Database error.":
            return text_
    return type(exc).__name__
