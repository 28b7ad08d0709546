"""The status page in a failure state, read in a real headless Chromium.

A real node (DCMTK storescu sending, a tiny threshold model, a PACS port where nothing
listens) ends with a failed job (a one-slice series is no volume), a delivery dead-lettered
and its destination down. The page must say "degraded" and why, show the destination
unreachable, the model's version and sha256, free disk, uptime and version, short UIDs with
study and series descriptions, and beside each failure the exact command that retries it;
that command must work, and the page's refresh must show its effect without moving the
reader's scroll position. /healthz and /readyz are checked in the same state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from chromium import Chromium
from conftest import dcmtk
from onnx_models import make_card, threshold_model

from pacsnode.config import load_settings
from pacsnode.demo.scenario import free_port, wait_for, write_node_config
from pacsnode.ledger import Ledger
from pacsnode.node import Node
from pacsnode.ops import NodeFacts, StatusServer
from pacsnode.ops.metrics import Metrics
from pacsnode.states import DeliveryState, DestinationState, JobState

pytestmark = pytest.mark.network

SMALL = {"backoff_seconds": 0.5, "backoff_multiplier": 2.0, "max_backoff_seconds": 2.0, "probe_seconds": 0.5,
         "horizon_hours": 0.0003}  # dead letter after ~1 s


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _send(port: int, files: list[Path]) -> None:
    subprocess.run([dcmtk("storescu"), "-aet", "STORESCU", "-aec", "PACSNODE", "127.0.0.1", str(port),
                    *map(str, files)], check=True, env={"TCP_NODELAY": "1"}, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def failed_node(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run a real node until it has a failed job, a dead letter and a destination down; stop it."""
    from distillation.phantoms.dicom import StudyInfo, write_series

    tmp = tmp_path_factory.mktemp("status-page")
    model = tmp / "t1-threshold.onnx"
    threshold_model(model, make_card(channels=1, labels=1, patch_size=(16, 32, 32)), threshold=100.0)
    node_port, pacs_port = free_port(), free_port()
    config = write_node_config(tmp / "node.toml", state_dir=tmp / "state", port=node_port, model_file=str(model),
                               destination=("ORTHANC", "127.0.0.1", pacs_port), group_by="series",
                               stable_seconds=0.5, outputs=("seg",), delivery=SMALL)
    good = dataclasses.replace(StudyInfo.synthetic(11), study_description="MR BRAIN W/WO CONTRAST")
    scout = dataclasses.replace(StudyInfo.synthetic(12), study_description="MR HEAD LOCALIZER")
    arr = np.random.default_rng(3).normal(100, 20, (6, 64, 64)).clip(0).astype(np.float32)
    good_files = write_series(arr, np.eye(4), tmp / "good", modality="MR", series_description="T1", study=good)
    scout_files = write_series(arr[:1], np.eye(4), tmp / "scout", modality="MR", series_description="T1",
                               study=scout)
    settings = load_settings(config)
    node = Node(settings)
    node.start()
    try:
        _send(node_port, good_files)
        _send(node_port, scout_files)
        ledger = node.ledger
        wait_for(lambda: [j for j in ledger.jobs() if j.state is JobState.FAILED]
                 and [d for d in ledger.deliveries() if d.state is DeliveryState.FAILED], 120,
                 "a failed job and a dead-lettered delivery")
        assert ledger.destination("pacs").state is DestinationState.DOWN
        (failed_job,) = ledger.jobs([JobState.FAILED])
        (dead,) = ledger.deliveries([DeliveryState.FAILED])
    finally:
        node.stop()
    return {"config": config, "settings": settings, "failed_job": failed_job, "dead": dead, "model": model,
            "pacs_port": pacs_port, "good": good, "scout": scout, "metrics": node.metrics}


@pytest.fixture
def server(failed_node: dict):
    """The node's status server over its ledger (port 0: no port race), healthy until told otherwise."""
    settings = failed_node["settings"]
    ledger = Ledger(Path(settings.node.state_dir) / "ledger.sqlite")
    live = {"healthy": True}
    srv = StatusServer("127.0.0.1", 0, ledger, failed_node["metrics"], lambda: live["healthy"],
                       destinations=tuple(settings.destinations), facts=NodeFacts.from_settings(settings))
    srv.start()
    try:
        yield f"http://127.0.0.1:{srv.port}", live, ledger
    finally:
        srv.stop()
        ledger.close()


def test_the_page_in_a_failure_state_says_what_to_do(failed_node: dict, server: tuple) -> None:
    base, _live, _ledger = server
    job, dead = failed_node["failed_job"], failed_node["dead"]
    config = str(Path(failed_node["config"]).resolve())
    sha = hashlib.sha256(failed_node["model"].read_bytes()).hexdigest()
    with Chromium() as browser:
        page = browser.open(base + "/")
        text = page.text()
        head = page.text("h1")
        reasons = page.text("#reasons").splitlines()
        facts = page.text("#facts")
        needs = page.eval("[...document.querySelectorAll('h2')].find(h => h.textContent === 'Needs action')"
                          ".nextElementSibling.innerText")
        dests = page.eval("[...document.querySelectorAll('h2')].find(h => h.textContent === 'Destinations')"
                          ".nextElementSibling.innerText")
        models = page.eval("[...document.querySelectorAll('h2')].find(h => h.textContent === 'Models')"
                           ".nextElementSibling.innerText")
        titles = page.eval("[...document.querySelectorAll('.uid')].map(e => [e.textContent, e.title])")
    assert head == "pacsnode degraded"
    assert len(reasons) == 3, reasons
    assert re.fullmatch(r"destination pacs is down since .+: .*connection refused.*", reasons[0]), reasons[0]
    assert reasons[1:] == [
        "1 delivery dead-lettered (see `pacsnode deliveries`; `pacsnode deliveries retry ID` sends one again)",
        "1 job failed (see `pacsnode jobs`; `pacsnode jobs retry ID` runs one again)"]
    # the exact retry command beside each failure, with the study and series it is about
    job_row = next(r for r in needs.splitlines() if r.startswith(f"job {job.id}\t"))
    assert f"pacsnode jobs retry {job.id} --config {config}" in job_row
    assert "MR HEAD LOCALIZER" in job_row and "MR T1" in job_row
    assert "a volume needs at least" in job_row, "the whole reason, not cut"
    dead_row = next(r for r in needs.splitlines() if r.startswith(f"delivery {dead.id}\t"))
    assert f"pacsnode deliveries retry {dead.id} --config {config}" in dead_row
    assert "MR BRAIN W/WO CONTRAST" in dead_row and "past delivery.horizon_hours" in dead_row
    # destinations with reachability, the model's version and sha256
    pacs = next(r for r in dests.splitlines() if r.startswith("pacs\t"))
    assert f"ORTHANC@127.0.0.1:{failed_node['pacs_port']}" in pacs and "\tno, down since " in pacs
    assert "connection refused" in pacs
    (name,) = failed_node["settings"].models
    brain = next(r for r in models.splitlines() if r.startswith(f"{name}\t"))
    assert brain.split("\t")[1:4] == ["test-model", "0.0.1", sha]
    # version, uptime, free disk
    assert re.match(r"pacsnode 0\.1\.0 · AE title PACSNODE · up \d+ s \(since .+\) · free disk \d+\.\d GiB of "
                    r"\d+\.\d GiB on .+/state \(instances are refused below \d+", facts), facts
    # short UIDs, the whole one on hover; no patient data
    assert titles and all(short.startswith("…") and len(short) == 13 and full.endswith(short[1:])
                          and len(full) > len(short) for short, full in titles), titles
    assert job.unit_uid not in text, "no 64-character UIDs in the rows"
    for study in (failed_node["good"], failed_node["scout"]):
        assert study.patient_name not in text and study.patient_id not in text


def test_health_and_readiness_in_the_failure_state(server: tuple) -> None:
    base, live, _ledger = server
    assert _get(base + "/healthz") == (200, "ok\n"), "a degraded node is alive"
    code, text = _get(base + "/readyz")
    assert code == 503 and text.startswith("degraded\ndestination pacs is down since ")
    assert text.endswith("\n1 job failed (see `pacsnode jobs`; `pacsnode jobs retry ID` runs one again)\n")
    live["healthy"] = False
    assert _get(base + "/healthz") == (503, "unhealthy\n")
    assert _get(base + "/readyz") == (503, "unhealthy\n")
    with Chromium() as browser:
        assert browser.open(base + "/").text("h1") == "pacsnode UNHEALTHY"


def test_the_retry_command_works_and_the_refresh_keeps_the_scroll_position(failed_node: dict,
                                                                            server: tuple) -> None:
    base, _live, ledger = server
    job = failed_node["failed_job"]
    with Chromium() as browser:
        page = browser.open(base + "/", height=400)
        assert page.eval("document.documentElement.scrollHeight") > 1200, "the page must be long enough to scroll"
        page.eval("window.scrollTo(0, 600); window.notReloaded = true")
        assert page.eval("window.scrollY") == 600
        command = page.eval(f"[...document.querySelectorAll('code')].map(c => c.textContent)"
                            f".find(t => t.startsWith('pacsnode jobs retry {job.id} '))")
        out = subprocess.run([sys.executable, "-m", "pacsnode", *shlex.split(command)[1:]], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.startswith(f"job {job.id} ") and "queued again" in out.stdout, out
        assert ledger.job(job.id).state is JobState.QUEUED
        assert page.eval("window.pacsnodeRefresh()", await_promise=True) is True
        assert page.eval("window.scrollY") == 600, "the refresh kept the reader where they were"
        assert page.eval("window.notReloaded") is True, "updated in place, not reloaded"
        assert "job failed" not in page.text("#reasons") and "1 delivery dead-lettered" in page.text("#reasons")
        assert f"job {job.id}\t" not in page.eval(
            "[...document.querySelectorAll('h2')].find(h => h.textContent === 'Needs action')"
            ".nextElementSibling.innerText")
        # and the page refreshes itself on its timer, still in place
        page.wait("document.getElementById('refresh').textContent.startsWith('refreshed at')",
                  "the page's own 5 s refresh", timeout=20)
        assert page.eval("window.scrollY") == 600 and page.eval("window.notReloaded") is True


def test_the_page_renders_for_a_fresh_node_with_nothing_failed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    srv = StatusServer("127.0.0.1", 0, ledger, Metrics(), lambda: True,
                       facts=NodeFacts(state_dir=tmp_path, min_free_disk_mb=1))
    srv.start()
    try:
        with Chromium() as browser:
            page = browser.open(f"http://127.0.0.1:{srv.port}/")
            assert page.text("h1") == "pacsnode healthy"
            assert page.eval("document.getElementById('reasons')") is None
            assert "nothing failed" in page.text()
    finally:
        srv.stop()
        ledger.close()


def test_the_failed_nodes_metrics_count_each_failure_by_stage_and_cause(failed_node: dict, server: tuple) -> None:
    base, _live, _ledger = server
    code, text = _get(base + "/metrics")
    assert code == 200

    def sample(name: str) -> str:
        (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
        return line[len(name) + 1:]

    assert sample('pacsnode_failures_total{cause="volume",stage="job"}') == "1", "the one-slice series"
    assert sample('pacsnode_failures_total{cause="unreachable",stage="delivery"}') == "1", "one C-STORE attempt"
    assert sample('pacsnode_failures_total{cause="dead_lettered",stage="delivery"}') == "1"
    assert sample('pacsnode_failures_total{cause="refused",stage="delivery"}') == "0"
    assert sample('pacsnode_instances_received_total') == "7"  # 6 + 1 slices
    assert sample('pacsnode_stage_seconds_count{stage="receive"}') == "7"
    assert sample('pacsnode_stage_seconds_count{stage="inference"}') == "1"
    assert sample('pacsnode_destination_up{destination="pacs"}') == "0"
    assert sample("pacsnode_degraded") == "1"
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
