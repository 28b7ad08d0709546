"""Cluster mode on one machine: receivers and workers as real `pacsnode` processes over a real
PostgreSQL (tests/pg.py), DCMTK's storescu as the modalities, Orthanc as the PACS.

What must hold whatever happens to a process: every acknowledged instance is in the ledger, a
study is one unit with one job, and the PACS receives one SEG and one SR for it, never a copy
from a worker that lost its job.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from cluster_procs import Cluster, storescu, study_files

from pacsnode.cluster.ledger import PgLedger
from pacsnode.demo.orthanc import OrthancServer
from pacsnode.demo.scenario import free_port, wait_for
from pacsnode.states import DeliveryState, JobState, SeriesState

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path: Path, pg_server) -> Cluster:  # type: ignore[no-untyped-def]
    c = Cluster(tmp_path, pg_server.new_database(), free_port())
    yield c
    c.stop_all()


@pytest.fixture
def orthanc(tmp_path: Path, cluster: Cluster) -> OrthancServer:
    with OrthancServer(tmp_path / "orthanc", cluster.pacs_port, free_port()) as o:
        yield o


def _modalities(orthanc: OrthancServer) -> list[str]:
    return sorted(orthanc.get(f"/instances/{i}/simplified-tags")["Modality"] for i in orthanc.get("/instances"))


def _outputs_sent(ledger: PgLedger) -> bool:
    """Every job done, its finishing start's SEG and SR sent, and every other outbox row sent too: a
    start that lost its job leaves none pending (fenced), only what it had sent before it lost it
    (the SEG goes out before the SR is built; the successor sends the same SOP Instance UIDs)."""
    jobs = {j.id: j for j in ledger.jobs()}
    if not jobs or any(j.state is not JobState.DONE for j in jobs.values()):
        return False
    rows = ledger.deliveries()
    final = {(d.job_id, Path(d.dataset_path).name) for d in rows
             if Path(d.dataset_path).parent.name == f"{d.job_id}.{jobs[d.job_id].starts}"}
    return (final == {(j, name) for j in jobs for name in ("seg.dcm", "sr.dcm")}
            and all(d.state is DeliveryState.SENT for d in rows))


def _earlier_rows(ledger: PgLedger) -> list[str]:
    """Outbox rows of starts that did not finish their job (each must have been sent before)."""
    jobs = {j.id: j for j in ledger.jobs()}
    return [d.dataset_path for d in ledger.deliveries()
            if Path(d.dataset_path).parent.name != f"{d.job_id}.{jobs[d.job_id].starts}"]


def _one_result(ledger: PgLedger, orthanc: OrthancServer, timeout: float = 90) -> None:
    wait_for(lambda: _outputs_sent(ledger), timeout, "the SEG and the SR to be sent")
    assert _modalities(orthanc) == ["SEG", "SR"]


def test_one_study_over_two_receivers_is_one_unit_one_job_one_seg(cluster: Cluster,
                                                                  orthanc: OrthancServer) -> None:
    files = study_files(cluster.root / "study", slices=12)
    a = cluster.receiver("receiver-a", "127.0.0.1")
    b = cluster.receiver("receiver-b", "127.0.0.2")
    cluster.worker("worker-1")
    # two parallel associations, instances interleaved
    results = {}
    sends = [threading.Thread(target=lambda n, r, fs: results.__setitem__(n, storescu(r.host, r.port, fs)),
                              args=(n, r, files[i::2])) for i, (n, r) in enumerate((("a", a), ("b", b)))]
    for t in sends:
        t.start()
    for t in sends:
        t.join()
    assert all(r.returncode == 0 for r in results.values()), {n: r.stderr[-500:] for n, r in results.items()}
    ledger = PgLedger(cluster.dsn)
    try:
        _one_result(ledger, orthanc)
        (unit,) = ledger.units()
        assert (unit.kind, unit.instance_count, unit.generation, unit.state) == ("study", 12, 1, SeriesState.DONE)
        (job,) = ledger.jobs()
        assert (job.state, job.attempts, job.starts) == (JobState.DONE, 1, 1)
        time.sleep(2 * cluster.stable_seconds)  # nothing more happens: no second timer, no second job
        assert len(ledger.jobs()) == 1 and ledger.job(job.id).starts == 1
        assert len(orthanc.get("/instances")) == 2
    finally:
        ledger.close()


def _job_running(ledger: PgLedger) -> int:
    """Wait (polling the ledger every 10 ms) until a job runs; its id."""
    def running() -> int | None:
        jobs = ledger.jobs([JobState.RUNNING])
        return jobs[0].id if jobs else None
    return wait_for(running, 90, "a job to run", interval=0.01)


def test_a_worker_killed_mid_job_leaves_it_to_another_done_on_the_second_attempt(
        cluster: Cluster, orthanc: OrthancServer) -> None:
    files = study_files(cluster.root / "study", slices=24, size=96)
    a = cluster.receiver("receiver-a")
    w1 = cluster.worker("worker-1")
    assert storescu(a.host, a.port, files).returncode == 0
    ledger = PgLedger(cluster.dsn)
    try:
        job_id = _job_running(ledger)
        w1.kill9()
        assert ledger.job(job_id).state is JobState.RUNNING  # killed before it finished
        cluster.worker("worker-2")
        _one_result(ledger, orthanc)
        job = ledger.job(job_id)
        assert (job.state, job.attempts, job.starts) == (JobState.DONE, 2, 3)
        assert "stopped answering" in (ledger.unit(job.unit_uid).reason or "") or job.last_error is None
        assert _earlier_rows(ledger) == []  # killed before its output: it queued nothing
    finally:
        ledger.close()


def test_a_frozen_worker_past_the_stall_timeout_finishes_nothing(cluster: Cluster,
                                                                 orthanc: OrthancServer) -> None:
    files = study_files(cluster.root / "study", slices=24, size=96)
    a = cluster.receiver("receiver-a")
    w1 = cluster.worker("worker-1")
    assert storescu(a.host, a.port, files).returncode == 0
    ledger = PgLedger(cluster.dsn)
    try:
        job_id = _job_running(ledger)
        w1.signal(signal.SIGSTOP)
        cluster.worker("worker-2")  # takes the job once worker-1 has been silent for stall_seconds
        _one_result(ledger, orthanc)
        assert (ledger.job(job_id).state, ledger.job(job_id).starts) == (JobState.DONE, 3)
        w1.cont()  # it wakes up and finishes its copy of the work: refused
        wait_for(lambda: "superseded" in w1.log.read_text(errors="replace"), 60,
                 "worker-1's finish to be refused")
        time.sleep(2.0)  # anything it could still send would be on its way by now
        assert "Traceback" not in w1.log.read_text(errors="replace")  # it ended its old item quietly
        assert _modalities(orthanc) == ["SEG", "SR"]
        assert _outputs_sent(ledger) and _earlier_rows(ledger) == []  # frozen before its output: nothing of it
        job = ledger.job(job_id)
        assert (job.state, job.attempts, job.starts) == (JobState.DONE, 2, 3)
    finally:
        ledger.close()


def _send_and_kill_after(receiver, files: list[Path], acknowledged: int) -> int:  # type: ignore[no-untyped-def]
    """storescu ``files`` to ``receiver``; SIGKILL the receiver once ``acknowledged`` C-STOREs got
    Success. Returns how many got Success in all (files go in order; the first n were acknowledged)."""
    import subprocess

    proc = subprocess.Popen(["/usr/bin/storescu", "-v", "-aet", "STORESCU", "-aec", "PACSNODE", receiver.host,
                             str(receiver.port), *map(str, files)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={"TCP_NODELAY": "1"})
    ok = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Received Store Response" in line:
            if "(Success)" not in line:
                break
            ok += 1
            if ok == acknowledged:
                receiver.kill9()
    proc.wait(30)
    return ok


def test_a_receiver_killed_mid_association_loses_no_acknowledged_instance(cluster: Cluster) -> None:
    import pydicom

    files = study_files(cluster.root / "study", slices=150, size=32)
    a = cluster.receiver("receiver-a")
    acked = _send_and_kill_after(a, files, 40)
    assert 40 <= acked < len(files), acked
    a.start()  # the same receiver again: its journal puts back what it had acknowledged
    ledger = PgLedger(cluster.dsn)
    try:
        for f in files[:acked]:
            sop = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            path = ledger.instance_path(sop)
            assert path is not None, f"acknowledged {f.name} is not in the ledger"
            wait_for(path.is_file, 10, f"{path} on the shared spool")
            assert pydicom.dcmread(path).SOPInstanceUID == sop
        (unit,) = ledger.units()
        assert unit.instance_count >= acked
    finally:
        ledger.close()


def test_postgresql_restarted_under_load_no_success_without_a_commit(cluster: Cluster, pg_server) -> None:  # type: ignore[no-untyped-def]
    import re
    import subprocess

    import pydicom

    files = study_files(cluster.root / "study", slices=200, size=32)
    a = cluster.receiver("receiver-a")
    proc = subprocess.Popen(["/usr/bin/storescu", "-v", "--no-halt", "-aet", "STORESCU", "-aec", "PACSNODE",
                             a.host, str(a.port), *map(str, files)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={"TCP_NODELAY": "1"})
    statuses: list[str] = []
    restart: threading.Thread | None = None
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"Received Store Response \((.+?)\)", line)
        if m:
            statuses.append(m.group(1))
            if len(statuses) == 30:  # PostgreSQL goes away under the association, for a second
                restart = threading.Thread(target=pg_server.restart, kwargs={"down_for": 1.0})
                restart.start()
    proc.wait(60)
    assert restart is not None
    restart.join()
    assert len(statuses) == len(files), statuses[-3:]
    refused = [i for i, s in enumerate(statuses) if s != "Success"]
    assert refused, "the restart must have refused some instances (else this test proves nothing)"
    assert {statuses[i] for i in refused} == {"Refused: OutOfResources"}  # 0xA700: the sender tries later
    ledger = PgLedger(cluster.dsn)
    try:
        for i, f in enumerate(files):
            sop = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            if statuses[i] == "Success":
                assert ledger.instance_path(sop) is not None, f"{f.name} got Success without a ledger row"
        # the sender tries the refused ones again: all in, one unit
        again = storescu(a.host, a.port, [files[i] for i in refused])
        assert again.returncode == 0, again.stderr[-500:]
        assert ledger.instance_count() == len(files)
        (unit,) = ledger.units()
        assert unit.instance_count == len(files)
    finally:
        ledger.close()


def _send_until_stored(receivers, files: list[Path], deadline: float) -> None:  # type: ignore[no-untyped-def]
    """As a PACS does: send, and send again what was not acknowledged, alternating receivers."""
    import re
    import subprocess

    todo = list(files)
    turn = 0
    while todo and time.monotonic() < deadline:
        r = receivers[turn % len(receivers)]
        turn += 1
        out = subprocess.run(["/usr/bin/storescu", "-v", "--no-halt", "-aet", "STORESCU", "-aec", "PACSNODE", r.host,
                              str(r.port), *map(str, todo)], capture_output=True, text=True, env={"TCP_NODELAY": "1"},
                             timeout=60)
        said = re.findall(r"Received Store Response \((.+?)\)", out.stdout + out.stderr)
        todo = [f for i, f in enumerate(todo) if i >= len(said) or said[i] != "Success"]
        if todo:
            time.sleep(0.3)
    assert not todo, f"{len(todo)} instances never acknowledged"


def test_chaos_random_kills_lose_nothing_and_duplicate_nothing(cluster: Cluster, orthanc: OrthancServer) -> None:
    import os
    import random

    seed = int(os.environ.get("PACSNODE_CHAOS_SEED", time.time() % 10000))  # printed: rerun a failure with it
    rng = random.Random(seed)
    print(f"chaos seed {seed} (PACSNODE_CHAOS_SEED)")
    studies = [study_files(cluster.root / f"study{k}", slices=10, size=48, seed=10 + k) for k in range(4)]
    receivers = [cluster.receiver("receiver-a", "127.0.0.1"), cluster.receiver("receiver-b", "127.0.0.2")]
    workers = [cluster.worker("worker-1"), cluster.worker("worker-2")]
    stop = threading.Event()
    done_chaos: list[str] = []

    def chaos() -> None:
        while not stop.wait(rng.uniform(1.0, 3.0)):
            w = rng.choice(workers)
            if rng.random() < 0.5:
                w.kill9()
                done_chaos.append(f"kill -9 {w.config.stem}")
                w.start()
            else:
                w.signal(signal.SIGSTOP)
                time.sleep(cluster.stall_seconds + rng.uniform(0.5, 2.0))
                w.cont()
                done_chaos.append(f"SIGSTOP/SIGCONT {w.config.stem}")
            if rng.random() < 0.3:
                r = receivers[1]
                r.kill9()
                done_chaos.append("kill -9 receiver-b")
                time.sleep(0.5)
                r.start()

    chaos_thread = threading.Thread(target=chaos)
    chaos_thread.start()
    try:
        deadline = time.monotonic() + 120
        senders = [threading.Thread(target=_send_until_stored, args=(receivers[k % 2:] + receivers[:k % 2], fs,
                                                                     deadline)) for k, fs in enumerate(studies)]
        for t in senders:
            t.start()
            time.sleep(rng.uniform(0.5, 2.0))
        for t in senders:
            t.join()
        time.sleep(rng.uniform(2.0, 5.0))  # let the chaos reach the jobs too
    finally:
        stop.set()
        chaos_thread.join()
    print("chaos:", "; ".join(done_chaos))
    ledger = PgLedger(cluster.dsn)
    try:
        wait_for(lambda: len(ledger.jobs()) == len(studies) and _outputs_sent(ledger), 180,
                 "a SEG and an SR for every study")
        time.sleep(3.0)
        # the invariants: nothing lost, nothing duplicated
        assert ledger.instance_count() == sum(len(fs) for fs in studies)
        units = ledger.units()
        assert len(units) == len(studies) and all(u.state is SeriesState.DONE for u in units)
        jobs = ledger.jobs()
        assert len(jobs) == len(studies) and all(j.state is JobState.DONE for j in jobs)
        # the finishing start's SEG and SR sent; any row of a start that lost its job was sent before
        # it lost it (nothing of it pending): the same SOP Instance UIDs, one copy at the PACS (below)
        assert _outputs_sent(ledger), ledger.deliveries()
        assert _modalities(orthanc) == ["SEG"] * len(studies) + ["SR"] * len(studies)
        studies_at_pacs = {orthanc.get(f"/instances/{i}/simplified-tags")["StudyInstanceUID"]
                           for i in orthanc.get("/instances")}
        assert studies_at_pacs == {u.study_uid for u in units}
    finally:
        ledger.close()


def test_a_worker_rides_out_a_postgresql_restart(cluster: Cluster, orthanc: OrthancServer, pg_server) -> None:  # type: ignore[no-untyped-def]
    a = cluster.receiver("receiver-a")
    w = cluster.worker("worker-1")
    pg_server.restart(down_for=2.0)  # its pools and procrastinate's listener lose their connections
    time.sleep(2 * cluster.stall_seconds)
    assert w.proc is not None and w.proc.poll() is None
    assert storescu(a.host, a.port, study_files(cluster.root / "study", slices=8)).returncode == 0
    ledger = PgLedger(cluster.dsn)
    try:
        _one_result(ledger, orthanc)
        (job,) = ledger.jobs()
        assert (job.state, job.attempts) == (JobState.DONE, 1)
    finally:
        ledger.close()
