"""Cluster mode on one machine: receivers and workers as real `pacsnode` processes over a real
PostgreSQL (tests/pg.py), DCMTK's storescu as the modalities, Orthanc as the PACS.

What must hold whatever happens to a process: every acknowledged instance is in the ledger, a
study is one unit with one job, and the PACS receives one SEG and one SR for it, never a copy
from a worker that lost its job.
"""

from __future__ import annotations

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


def _one_result(ledger: PgLedger, orthanc: OrthancServer, timeout: float = 90) -> None:
    wait_for(lambda: [d.state for d in ledger.deliveries()] == [DeliveryState.SENT] * 2, timeout,
             "the SEG and the SR to be sent")
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
