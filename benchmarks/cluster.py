"""Cluster benchmark: what PostgreSQL + procrastinate cost and give against the embedded node.

    nice .venv/bin/python benchmarks/cluster.py [--jobs 200] [--studies 12] [--latency 10] [--repeats 3]

Four measurements, each on a throw-away PostgreSQL 15 (tests/pg.py: initdb in a temp folder,
``fsync=off``) on this machine, with real `pacsnode` processes, DCMTK's storescu and Orthanc:

1. queue overhead: ``--jobs`` ledger jobs with a no-op model (queue_job → item → JobRunner →
   finish), one inference thread, in this process: jobs/s, cluster against embedded (SQLite +
   APScheduler);
2. ingest: one 155-slice 240² MR series by storescu into an embedded node, a cluster receiver
   and DCMTK's storescp (instances/s and the ratio to storescp), interleaved ``--repeats`` times;
3. last instance → job start: ``--latency`` studies sent one after another (``stable_seconds``
   1 s), from the unit's last received instance to its job's "attempt 1 started", p50/p95,
   embedded against one receiver + one worker;
4. studies per hour: ``--studies`` small studies (24×96², threshold model, SEG + SR to Orthanc)
   sent at once to one receiver, 1, 2 and 3 workers, from the first send to the last delivery.

Prints a Markdown table (paste it into docs/cluster.md) with the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from cluster_procs import Cluster, Proc, storescu, study_files  # noqa: E402
from pg import PgServer  # noqa: E402

from pacsnode.demo.orthanc import OrthancServer  # noqa: E402
from pacsnode.demo.scenario import free_port, wait_for  # noqa: E402
from pacsnode.states import DeliveryState, JobState  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}
STARTED = re.compile(r"^(\S+ \S+) INFO pacsnode\.scheduler: job \d+ \(unit (\S+), model .*attempt 1 started", re.M)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


# --- 1. queue overhead -------------------------------------------------------------------------


def _complete_units(ledger, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    from pacsnode.ledger import InstanceRecord, SeriesAttributes

    uids = []
    for i in range(n):
        uid = f"1.2.9.{i}"
        ledger.record_instance(InstanceRecord(f"{uid}.1", "1.2.840.10008.5.1.4.1.1.4", uid, uid, Path(f"/x/{i}"), 1,
                                              "1.2.840.10008.1.2.1"), SeriesAttributes("MR"), unit_uid=uid,
                               unit_kind="series")
        ledger.complete_unit(uid)
        uids.append(uid)
    return uids


def queue_overhead(server: PgServer, n: int) -> dict[str, float]:
    from pacsnode.cluster.ledger import PgLedger
    from pacsnode.cluster.queue import ClusterScheduler
    from pacsnode.cluster.worker import ClusterWorker
    from pacsnode.config import SchedulerSettings
    from pacsnode.ledger import Ledger
    from pacsnode.scheduler import JOB_HANDLER, JobRunner, Scheduler, register_handler
    from pacsnode.series import STABLE_HANDLER

    out = {}
    register_handler(STABLE_HANDLER, lambda uid: None)
    tmp = Path(tempfile.mkdtemp(prefix="pacsnode-bench-"))
    for kind in ("embedded", "cluster"):
        if kind == "cluster":
            ledger = PgLedger(server.new_database(), stable_seconds=3600)
            sched = ClusterScheduler(ledger.engine, SchedulerSettings())
            worker = ClusterWorker(ledger, stall_seconds=30, inference_threads=1)
        else:
            ledger = Ledger(tmp / "ledger.sqlite")
            sched = Scheduler(tmp, SchedulerSettings(workers=1))
            worker = None
        runner = JobRunner(ledger, sched, SchedulerSettings(), work=lambda job: [])
        register_handler(JOB_HANDLER, runner.run)
        uids = _complete_units(ledger, n)
        sched.start()
        if worker is not None:
            worker.start()
        t0 = time.perf_counter()
        for uid in uids:
            job = ledger.queue_job(uid, route="r", model_name="m", model_sha256="0")
            runner.submit(job.id)
        wait_for(lambda led=ledger: len(led.jobs([JobState.DONE])) == n, 600, f"{n} no-op jobs", interval=0.05)
        out[kind] = n / (time.perf_counter() - t0)
        if worker is not None:
            worker.stop(5)
        sched.shutdown()
        ledger.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return out


# --- 2. ingest -----------------------------------------------------------------------------------


def _timed_send(host: str, port: int, files: list[Path]) -> float:
    t0 = time.perf_counter()
    r = storescu(host, port, files)
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed: {r.stderr[-500:]}")
    return time.perf_counter() - t0


def ingest(server: PgServer, root: Path, repeats: int) -> dict[str, float]:
    import numpy as np

    from distillation.phantoms.dicom import write_series

    files = write_series(np.random.default_rng(0).normal(300, 50, (155, 240, 240)).clip(0).astype(np.float32),
                         np.eye(4), root / "mr", modality="MR", series_description="T1")
    times: dict[str, list[float]] = {"storescp": [], "embedded": [], "cluster": []}
    for r in range(repeats):
        for kind in times:
            work = root / f"{kind}-{r}"
            work.mkdir()
            if kind == "storescp":
                port = free_port()
                p = subprocess.Popen(["/usr/bin/storescp", "-od", str(work), "-aet", "PACSNODE", str(port)], env=ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                times[kind].append(_timed_send("127.0.0.1", port, files))
                p.terminate()
                p.wait()
                continue
            c = Cluster(work, server.new_database() if kind == "cluster" else "", free_port(), stable_seconds=3600)
            if kind == "cluster":
                proc = c.receiver("receiver")
            else:
                config, port = c.config("embedded")
                text = config.read_text()
                config.write_text(text[:text.index("[cluster]")])
                proc = Proc(["serve", "--config", str(config)], config, "127.0.0.1", port).start()
            try:
                times[kind].append(_timed_send(proc.host, proc.port, files))
            finally:
                proc.stop()
    return {k: len(files) / statistics.median(v) for k, v in times.items()}


# --- 3. latency and 4. throughput ----------------------------------------------------------------


def _log_starts(logs: list[Path]) -> dict[str, float]:
    out = {}
    for log in logs:
        for stamp, unit in STARTED.findall(log.read_text(errors="replace")):
            out[unit] = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return out


def latency(server: PgServer, root: Path, n: int) -> dict[str, tuple[float, float]]:
    from pacsnode.cluster.ledger import PgLedger
    from pacsnode.ledger import Ledger

    out = {}
    for kind in ("embedded", "cluster"):
        work = root / f"latency-{kind}"
        c = Cluster(work, server.new_database(), free_port(), stable_seconds=1.0)
        with OrthancServer(work / "orthanc", c.pacs_port, free_port()):
            if kind == "cluster":
                r = c.receiver("receiver")
                procs = [r, c.worker("worker")]
            else:
                config, port = c.config("embedded")
                text = config.read_text()
                config.write_text(text[:text.index("[cluster]")])
                r = Proc(["serve", "--config", str(config)], config, "127.0.0.1", port).start()
                procs = [r]
            try:
                for k in range(n):
                    storescu(r.host, r.port, study_files(work / f"s{k}", slices=8, size=48, seed=k))
                    time.sleep(2.5)  # one study at a time: the timer and the job, not a queue
                ledger = PgLedger(c.dsn) if kind == "cluster" else Ledger(work / "embedded" / "ledger.sqlite")
                wait_for(lambda led=ledger: len(led.jobs([JobState.DONE])) == n, 120, "every job done")
                starts = _log_starts([p.log for p in procs])
                gaps = [starts[u.uid] - u.last_received_at for u in ledger.units()]
                ledger.close()
            finally:
                for p in procs:
                    p.stop()
        out[kind] = (_pct(gaps, 0.5), _pct(gaps, 0.95))
    return out


def _cpu_seconds(procs: list[Proc]) -> float:
    """User + system CPU seconds the processes have used so far (/proc/PID/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in procs:
        assert p.proc is not None
        fields = Path(f"/proc/{p.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def throughput(server: PgServer, root: Path, n: int, workers: int) -> tuple[float, float]:
    """(studies per hour, worker CPU seconds per study) with ``workers`` worker processes."""
    from pacsnode.cluster.ledger import PgLedger

    work = root / f"throughput-{workers}"
    c = Cluster(work, server.new_database(), free_port(), stable_seconds=1.0)
    studies = [study_files(work / f"s{k}", slices=24, size=96, seed=k) for k in range(n)]
    with OrthancServer(work / "orthanc", c.pacs_port, free_port()):
        r = c.receiver("receiver")
        procs = [c.worker(f"worker-{w}") for w in range(workers)]
        ledger = PgLedger(c.dsn)
        try:
            time.sleep(3.0)  # the workers' models loaded and self-checked: their CPU is not the studies'
            cpu0 = _cpu_seconds(procs)
            t0 = time.perf_counter()
            for fs in studies:  # as a modality sends: one study after the other, each checked
                sent = storescu(r.host, r.port, fs)
                if sent.returncode != 0:
                    raise RuntimeError(f"storescu failed: {sent.stderr[-500:]}")
            wait_for(lambda: len(ledger.deliveries([DeliveryState.SENT])) == 2 * n, 900, "every result sent")
            elapsed = time.perf_counter() - t0
            cpu = _cpu_seconds(procs) - cpu0
        finally:
            ledger.close()
            c.stop_all()
    return n / elapsed * 3600, cpu / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--studies", type=int, default=12)
    ap.add_argument("--latency", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pacsnode-cluster-bench-"))
    server = PgServer().start()
    rows: list[str] = []

    def say(row: str) -> None:
        rows.append(row)
        print(row, flush=True)

    say(f"load average at start: {_load()} ({os.cpu_count()} CPUs)")
    try:
        q = queue_overhead(server, args.jobs)
        say(f"| queue overhead, no-op model ({args.jobs} jobs, 1 thread) | embedded {q['embedded']:.0f} jobs/s "
                    f"| cluster {q['cluster']:.0f} jobs/s |")
        ing = ingest(server, root, args.repeats)
        say(f"| ingest, 155×240² MR (median of {args.repeats}) | storescp {ing['storescp']:.0f} inst/s | "
                    f"embedded {ing['embedded']:.0f} inst/s ({ing['embedded'] / ing['storescp']:.2f}×) | "
                    f"cluster receiver {ing['cluster']:.0f} inst/s ({ing['cluster'] / ing['storescp']:.2f}×) |")
        lat = latency(server, root, args.latency)
        say(f"| last instance → job start ({args.latency} studies, stable_seconds 1) | embedded p50 "
                    f"{lat['embedded'][0]:.2f} s, p95 {lat['embedded'][1]:.2f} s | cluster p50 {lat['cluster'][0]:.2f} s, "
                    f"p95 {lat['cluster'][1]:.2f} s |")
        per = {w: throughput(server, root, args.studies, w) for w in (1, 2, 3)}
        say(f"| studies/hour ({args.studies} studies 24×96², SEG + SR) | "
            + " | ".join(f"{w} worker{'s' if w > 1 else ''}: {v:.0f}/h, {cpu:.2f} worker CPU-s a study "
                         f"(≈ {3600 / cpu:.0f}/h per core)" for w, (v, cpu) in per.items()) + " |")
    finally:
        say(f"load average at end: {_load()}")
        server.remove()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
