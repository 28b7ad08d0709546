"""Operations: the status page, /metrics, /healthz, systemd notify, retention."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

from pacsnode.config import RetentionSettings
from pacsnode.demo.scenario import NodeProcess, free_port, wait_for, write_node_config
from pacsnode.ledger import InstanceRecord, Ledger, SeriesAttributes
from pacsnode.ops import NodeFacts, readiness, retention_sweep, status_snapshot
from pacsnode.receive.spool import Spool
from pacsnode.states import SeriesState


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers["Content-Type"], r.read().decode()


@pytest.mark.network
def test_status_page_metrics_healthz_and_systemd_notify(tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(60)
    port, http_port = free_port(), free_port()
    config = write_node_config(tmp_path / "node.toml", state_dir=tmp_path / "state", port=port,
                               model_file="builtin:brain-tumor", destination=None, metrics_port=http_port)
    node = NodeProcess(config, port, extra_env={"NOTIFY_SOCKET": str(notify_path)})
    try:
        with node:
            assert notify.recv(1024).decode().startswith("READY=1")
            # one series arrives (the route matches no MR here: it is recorded, then ignored)
            files = _tiny_series(tmp_path / "series")
            subprocess.run(["/usr/bin/storescu", "-aet", "STORESCU", "-aec", "PACSNODE", "127.0.0.1",
                            str(port), *map(str, files)], check=True, env={"TCP_NODELAY": "1"},
                           capture_output=True)
            base = f"http://127.0.0.1:{http_port}"
            code, ctype, body = _get(base + "/healthz")
            assert (code, body) == (200, "ok\n")
            assert _get(base + "/readyz")[::2] == (200, "ready\n")  # nothing failed, no destination down
            wait_for(lambda: json.loads(_get(base + "/status")[2])["units"]["ignored"] == 1, 30,
                     "the unit to be recorded")
            code, ctype, page = _get(base + "/")
            assert code == 200 and ctype.startswith("text/html")
            assert "pacsnode" in page and "healthy" in page and "no route matches" in page
            patient = pydicom.dcmread(files[0])
            assert str(patient.PatientName) not in page and patient.PatientID not in page, "no patient data"
            assert patient.StudyDescription in page and "CT tiny" in page, "study and series descriptions"
            code, ctype, metrics = _get(base + "/metrics")
            assert "pacsnode_instances_received_total 3" in metrics
            assert 'pacsnode_units{state="ignored"} 1' in metrics
        assert notify.recv(1024).decode().startswith("STOPPING=1")
    finally:
        notify.close()


def _tiny_series(out: Path) -> list[Path]:
    import numpy as np

    from distillation.phantoms import write_series

    arr = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    return write_series(arr, np.diag([1.0, 1.0, 1.0, 1.0]), out, modality="CT", series_description="tiny")


def test_retention_removes_old_finished_units_and_keeps_recent_ones(tmp_path: Path) -> None:
    spool, ledger = Spool(tmp_path), Ledger(tmp_path / "ledger.sqlite")
    try:
        paths = {}
        for name, state in (("first", SeriesState.IGNORED), ("second", SeriesState.IGNORED),
                            ("live", SeriesState.RECEIVING)):
            path = tmp_path / f"{name}.dcm"
            path.write_bytes(b"x")
            ledger.record_instance(
                InstanceRecord(sop_instance_uid=f"1.2.{len(paths)}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                               series_uid=f"9.{name}", study_uid="9.9", path=path, size=1,
                               transfer_syntax="1.2.840.10008.1.2.1"),
                SeriesAttributes(modality="CT"), unit_uid=f"9.{name}", unit_kind="series")
            if state is not SeriesState.RECEIVING:
                ledger.complete_unit(f"9.{name}")
                ledger.set_unit_state(f"9.{name}", state, reason="no route matches")
            paths[name] = path
        settings = RetentionSettings(ignored_hours=1.0)
        now = time.time()
        # both ignored units were last changed now: nothing is due yet, then both are, two hours on
        assert retention_sweep(ledger, spool, settings, now=now) == 0
        assert retention_sweep(ledger, spool, settings, now=now + 2 * 3600) == 2
        assert not paths["first"].exists() and not paths["second"].exists()
        assert paths["live"].exists(), "a unit still receiving is never removed"
        assert ledger.unit("9.first").purged_at is not None
        assert retention_sweep(ledger, spool, settings, now=now + 3 * 3600) == 0, "purged once"
    finally:
        ledger.close()


def test_free_disk_below_the_mark_makes_the_node_degraded(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        low = status_snapshot(ledger, facts=NodeFacts(state_dir=tmp_path, min_free_disk_mb=10**9))
        fine = status_snapshot(ledger, facts=NodeFacts(state_dir=tmp_path, min_free_disk_mb=1))
    finally:
        ledger.close()
    assert low["state"] == "degraded" and len(low["reasons"]) == 1
    assert re.fullmatch(rf"free disk \d+(\.\d)? (GiB|MiB) on {re.escape(str(tmp_path))} is below "
                        r"node\.min_free_disk_mb = 1000000000: new instances are refused \(A700\) until space "
                        r"is freed", low["reasons"][0]), low["reasons"][0]
    assert readiness(True, low["reasons"]) == (503, f"degraded\n{low['reasons'][0]}\n")
    assert (fine["state"], fine["reasons"]) == ("ok", [])
    assert fine["disk"]["free_bytes"] > 0 and fine["disk"]["min_free_bytes"] == 2**20
