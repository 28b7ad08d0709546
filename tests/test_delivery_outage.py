"""Deliveries ride out a PACS outage: a destination that is down is probed by C-ECHO, its
results go as soon as it answers, and only a delivery failing past the horizon is
dead-lettered, with the reason. Real peers: Orthanc as the PACS, a real closed port as
the outage, ``pacsnode serve`` (or a Node in this process) as the node."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import dcmtk
from outbox import queue_result
from pydicom.data import get_testdata_file

from pacsnode.config import load_settings
from pacsnode.demo.orthanc import OrthancServer
from pacsnode.demo.scenario import NodeProcess, free_port, wait_for, write_node_config
from pacsnode.node import Node
from pacsnode.states import DeliveryState, DestinationState
from tests.onnx_models import make_card, threshold_model

pytestmark = pytest.mark.network

SMALL = {"backoff_seconds": 0.5, "backoff_multiplier": 2.0, "max_backoff_seconds": 2.0, "probe_seconds": 0.5}
TS = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
OLD_WINDOW = 0.5 + 1.0  # the old shared policy's 3 attempts, at this backoff: tried at 0, 0.5 and 1.5 s


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _status(base: str) -> dict[str, Any]:
    return json.loads(_get(base + "/status")[1])


@pytest.mark.slow
def test_pacs_outage_longer_than_the_old_horizon_then_the_result_arrives_once(tmp_path: Path) -> None:
    from distillation.phantoms.dicom import write_series

    model = tmp_path / "t1-threshold.onnx"
    threshold_model(model, make_card(channels=1, labels=1, patch_size=(16, 32, 32)), threshold=100.0)
    node_port, pacs_port, pacs_http, http_port = free_port(), free_port(), free_port(), free_port()
    config = write_node_config(
        tmp_path / "node.toml", state_dir=tmp_path / "state", port=node_port, model_file=str(model),
        destination=("ORTHANC", "127.0.0.1", pacs_port), group_by="series", stable_seconds=1.0,
        outputs=("seg",), metrics_port=http_port, delivery={"horizon_hours": 24.0, **SMALL})
    arr = np.random.default_rng(3).normal(100, 20, (6, 64, 64)).clip(0).astype(np.float32)
    files = write_series(arr, np.eye(4), tmp_path / "series", modality="MR", series_description="T1")
    base = f"http://127.0.0.1:{http_port}"
    orthanc = OrthancServer(tmp_path / "orthanc", pacs_port, pacs_http)
    with NodeProcess(config, node_port):
        subprocess.run(["/usr/bin/storescu", "-aet", "STORESCU", "-aec", "PACSNODE", "127.0.0.1",
                        str(node_port), *map(str, files)], check=True, env={"TCP_NODELAY": "1"},
                       capture_output=True)
        # The PACS is down (nothing listens on its port): the first attempt marks it down.
        status = wait_for(lambda: (s := _status(base))["deliveries"].get("pending")
                          and s["destinations"]["pacs"]["state"] == "down" and s, 120,
                          "the SEG's delivery to fail against the closed port")
        (row,) = _deliveries(config)
        since = row["failing_since"]
        assert row["attempts"] == 1 and "connection refused (nothing listens on that port)" in row["last_error"]
        # Stay down for three times the old policy's whole 3-attempt window, with probes running.
        wait_for(lambda: time.time() - since > 3 * OLD_WINDOW
                 and (_status(base)["destinations"]["pacs"]["last_probe_at"] or 0) > since + 4 * SMALL["probe_seconds"],
                 60, "three old windows of outage, probed by C-ECHO")
        (row,) = _deliveries(config)
        assert row["state"] == "pending", row
        assert row["attempts"] == 1, "a destination that is down is probed, its deliveries not tried one by one"
        code, text = _get(base + "/readyz")
        assert code == 503
        assert re.fullmatch(rf"degraded\ndestination pacs is down since {TS}: C-ECHO to "
                            rf"ORTHANC@127\.0\.0\.1:{pacs_port} needs an association, got none: connection refused "
                            r"\(nothing listens on that port\)\n", text), text
        assert _get(base + "/healthz") == (200, "ok\n"), "liveness is not readiness"
        assert 'pacsnode_destination_up{destination="pacs"} 0' in _get(base + "/metrics")[1]
        page = _get(base + "/")[1]
        assert "pacsnode <span class=\"warn\">degraded</span>" in page and ">healthy<" not in page

        with orthanc:  # the PACS comes back on the same port
            back = time.monotonic()
            wait_for(lambda: orthanc.get("/instances"), 30, "the SEG to arrive by itself")
            arrived = time.monotonic() - back
            wait_for(lambda: _deliveries(config)[0]["state"] == "sent", 10, "the outbox to show sent")
            status = _status(base)
            assert status["destinations"]["pacs"]["state"] == "up" and status["state"] == "ok"
            assert _get(base + "/readyz") == (200, "ready\n")
            assert 'pacsnode_destination_up{destination="pacs"} 1' in _get(base + "/metrics")[1]
            wait_for(lambda: time.monotonic() - back > arrived + 4 * SMALL["probe_seconds"], 10, "more probe intervals")
            assert len(orthanc.get("/instances")) == 1, "exactly once"
            (row,) = _deliveries(config)
            assert row["attempts"] == 2
    print(f"SEG arrived {arrived:.2f} s after Orthanc answered (probe every {SMALL['probe_seconds']} s)")


def _deliveries(config: Path) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "pacsnode", "deliveries", "--config", str(config), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _node_with_a_result(tmp_path: Path, pacs_port: int, **delivery: float) -> tuple[Path, Path]:
    """A node config sending to ``pacs_port`` with [delivery] ``delivery``, and a result file."""
    config = write_node_config(
        tmp_path / "node.toml", state_dir=tmp_path / "state", port=free_port(), model_file="builtin:none",
        destination=("ORTHANC", "127.0.0.1", pacs_port), metrics_port=free_port(), delivery=delivery)
    result = tmp_path / "result.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), result)
    return config, result



def test_dead_letter_past_a_tiny_horizon_says_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead_port = free_port()
    config, result = _node_with_a_result(tmp_path, dead_port, horizon_hours=0.0003, **SMALL)  # 1.08 s
    node = Node(load_settings(config))
    http_port = node.settings.metrics.port
    caplog.set_level(logging.INFO, logger="pacsnode")
    node.start()
    try:
        ledger = node.ledger
        delivery = ledger.delivery(queue_result(node, result))
        t0 = time.time()

        failed = wait_for(lambda: (d := ledger.delivery(delivery.id)).state is DeliveryState.FAILED and d, 30,
                          "the delivery to be dead-lettered")
        took = time.time() - t0
        assert took > 0.0003 * 3600, "never before the horizon"
        down = (rf"destination pacs is down since {TS}: C-ECHO to ORTHANC@127\.0\.0\.1:{dead_port} needs an "
                r"association, got none: connection refused \(nothing listens on that port\)")
        assert re.fullmatch(rf"{down} \(failing since {TS}, past delivery\.horizon_hours = 0\.0003\)",
                            failed.last_error), failed.last_error
        assert failed.attempts == 1  # one C-STORE attempt; then C-ECHO probes until the horizon
        dest = ledger.destination("pacs")
        assert dest is not None and dest.state is DestinationState.DOWN
        assert dest.last_probe_at is not None and dest.last_probe_at > failed.failing_since
        assert any(r.levelno == logging.ERROR and f"delivery {delivery.id} (result.dcm to pacs) dead-lettered: "
                   f"{failed.last_error}" == r.getMessage() for r in caplog.records)
        reasons = node.degraded_reasons()
        assert re.fullmatch(down, reasons[0]), reasons
        assert reasons[1:] == ["1 delivery dead-lettered (see `pacsnode deliveries`; "
                               "`pacsnode deliveries retry ID` sends one again)"]
        code, text = _get(f"http://127.0.0.1:{http_port}/readyz")
        assert code == 503 and text.startswith("degraded\n") and text.endswith(
            "\n1 delivery dead-lettered (see `pacsnode deliveries`; `pacsnode deliveries retry ID` sends one again)\n")
        metrics = _get(f"http://127.0.0.1:{http_port}/metrics")[1]
        assert "pacsnode_deliveries_dead_lettered_total 1\n" in metrics
        assert 'pacsnode_deliveries{state="failed"} 1\n' in metrics
        assert metrics.count("# TYPE pacsnode_deliveries gauge") == 1

        # `pacsnode deliveries retry ID` makes it pending again; with the destination still down it
        # waits for the probe, and is dead-lettered again past the horizon, never stranded
        out = subprocess.run([sys.executable, "-m", "pacsnode", "deliveries", "retry", str(delivery.id),
                              "--config", str(config)], capture_output=True, text=True, check=True)
        assert out.stdout == f"delivery {delivery.id} (result.dcm to pacs) pending again\n"
        node.upkeep()
        again = wait_for(lambda: (d := ledger.delivery(delivery.id)).state is DeliveryState.FAILED and d, 30,
                         "the retried delivery to be dead-lettered again")
        assert again.attempts == 0
        assert re.fullmatch(rf"{down} \(failing since {TS}, past delivery\.horizon_hours = 0\.0003\)",
                            again.last_error), again.last_error
    finally:
        node.stop()
    print(f"dead-lettered {took:.2f} s after the first attempt (horizon 1.08 s, probe 0.5 s)")


def test_a_destination_down_across_a_restart_gets_its_result_when_it_answers(tmp_path: Path) -> None:
    pacs_port = free_port()
    config, result = _node_with_a_result(tmp_path, pacs_port, horizon_hours=24.0, **SMALL)
    settings = load_settings(config)
    node = Node(settings)
    node.start()
    try:
        delivery_id = queue_result(node, result)
        wait_for(lambda: (d := node.ledger.destination("pacs")) is not None and d.state is DestinationState.DOWN,
                 30, "the destination to be down")
    finally:
        node.stop()
    received = tmp_path / "received"
    received.mkdir()
    pacs = subprocess.Popen([dcmtk("storescp"), "-aet", "ORTHANC", "-od", str(received), str(pacs_port)],
                            env={"TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = Node(settings)
    try:
        node.start()  # the pending delivery and its destination's probe resume with the node
        wait_for(lambda: node.ledger.delivery(delivery_id).state is DeliveryState.SENT, 30,
                 "the delivery to go once the destination answers")
        assert node.ledger.destination("pacs").state is DestinationState.UP
        assert len(list(received.iterdir())) == 1
        assert node.degraded_reasons() == []
    finally:
        node.stop()
        pacs.terminate()
        pacs.wait(timeout=10)
