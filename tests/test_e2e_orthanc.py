"""End to end with Orthanc as the real PACS.

Orthanc (started here on free loopback ports) C-STOREs a synthetic 4-series brain MR study
to a running ``pacsnode serve`` through its REST API (/modalities/…/store); the node
completes the study, runs a model whose output is known exactly, and sends SEG and SR
back to Orthanc, where they are checked through the REST API, read back with highdicom
and validated with dciodvfy.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from pacsnode.demo.orthanc import OrthancServer, RemoteModality
from pacsnode.demo.scenario import NodeProcess, echo, free_port, wait_for, write_node_config
from pacsnode.ledger import Ledger
from tests.onnx_models import make_card, threshold_model

pytestmark = [pytest.mark.network, pytest.mark.slow]

THRESHOLD = 400.0


@pytest.fixture(scope="module")
def brain_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    from distillation.phantoms import generate_brain_case, write_study

    case = generate_brain_case(7, spacing=(3.0, 3.0, 3.0))
    return write_study(case, tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def threshold_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    card = make_card(channels=4, labels=1, target_spacing=(3.0, 3.0, 3.0), patch_size=(32, 48, 48),
                     name="t1-threshold", version="1.0.0")
    path = tmp_path_factory.mktemp("model") / "t1-threshold.onnx"
    threshold_model(path, card, channels=4, threshold=THRESHOLD)
    return path


def _expected_labels(brain_study: dict[str, list[Path]]) -> tuple[np.ndarray, list[str]]:
    """The threshold model's labels computed from the T1 files with pydicom alone (not the node's
    reader): slices in order along the slice normal, rescaled, thresholded."""
    t1 = [pydicom.dcmread(f) for f in brain_study["T1"]]
    normal = np.cross(*np.reshape(np.asarray(t1[0].ImageOrientationPatient, float), (2, 3)))
    t1.sort(key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
    values = np.stack([ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
                       for ds in t1])
    return (values > THRESHOLD).astype(np.uint8), [str(ds.SOPInstanceUID) for ds in t1]


def _dciodvfy_errors(blob: bytes, tmp: Path) -> list[str]:
    f = tmp / "check.dcm"
    f.write_bytes(blob)
    out = subprocess.run(["/usr/bin/dciodvfy", str(f)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _cli_json(config: Path, *args: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "pacsnode", *args, "--config", str(config), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _node_and_pacs(tmp: Path, model: Path, *, pacs_port: int | None = None, **cfg):
    node_port, dicom_port, http_port = free_port(), pacs_port or free_port(), free_port()
    config = write_node_config(
        tmp / "node.toml", state_dir=tmp / "state", port=node_port, model_file=str(model),
        destination=("ORTHANC", "127.0.0.1", dicom_port), stable_seconds=2.0, **cfg)
    orthanc = OrthancServer(tmp / "orthanc", dicom_port, http_port,
                            modalities=[RemoteModality("pacsnode", "PACSNODE", "127.0.0.1", node_port)])
    return config, node_port, orthanc


def test_orthanc_sends_study_and_receives_seg_and_sr(tmp_path: Path, brain_study, threshold_onnx) -> None:
    config, node_port, orthanc = _node_and_pacs(tmp_path, threshold_onnx)
    files = [f for series in brain_study.values() for f in series]
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with orthanc, NodeProcess(config, node_port):
        orthanc.upload(files)
        study_id = orthanc.study_id(study_uid)
        assert study_id is not None
        orthanc.store_to("pacsnode", [study_id])

        segs = wait_for(lambda: orthanc.find_series(study_uid, "SEG"), 180, "the SEG in Orthanc")
        srs = wait_for(lambda: orthanc.find_series(study_uid, "SR"), 60, "the SR in Orthanc")
        seg_blob = orthanc.instance_file(orthanc.series_instances(segs[0]["ID"])[0])
        sr_blob = orthanc.instance_file(orthanc.series_instances(srs[0]["ID"])[0])

    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(seg_blob)))
    expected, source_uids = _expected_labels(brain_study)
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, combine_segments=True)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected), f"{int((got != expected).sum())} voxels differ"
    assert expected.sum() > 1000  # the model found something, so the comparison means something
    assert seg.SeriesDescription.startswith("AI SEG")
    referenced = {s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence}
    series_uids = {str(pydicom.dcmread(v[0], stop_before_pixels=True).SeriesInstanceUID)
                   for v in brain_study.values()}
    assert referenced == series_uids, "every input series is referenced"
    assert _dciodvfy_errors(seg_blob, tmp_path) == []
    assert _dciodvfy_errors(sr_blob, tmp_path) == []

    jobs = _cli_json(config, "jobs")
    assert [j["state"] for j in jobs] == ["done"]
    deliveries = _cli_json(config, "deliveries")
    assert sorted(d["state"] for d in deliveries) == ["sent", "sent"]
    # the SEG was queued before the SR was written: it does not wait for the volume report
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite")
    try:
        rows = {Path(d.dataset_path).name: d for d in ledger.deliveries()}
    finally:
        ledger.close()
    assert rows["seg.dcm"].created_at < Path(rows["sr.dcm"].dataset_path).stat().st_mtime < rows["sr.dcm"].created_at


def test_pacs_down_then_back_gets_the_result_exactly_once(tmp_path: Path, brain_study, threshold_onnx) -> None:
    config, node_port, orthanc = _node_and_pacs(
        tmp_path, threshold_onnx,
        delivery={"backoff_seconds": 1.0, "backoff_multiplier": 1.5, "max_backoff_seconds": 3.0,
                  "probe_seconds": 1.0})
    files = [f for series in brain_study.values() for f in series]
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with NodeProcess(config, node_port):
        # The PACS is down: send the study from DCMTK's storescu straight to the node.
        subprocess.run(["/usr/bin/storescu", "-aet", "STORESCU", "-aec", "PACSNODE", "+sd", "+r",
                        "127.0.0.1", str(node_port), str(Path(files[0]).parents[1])],
                       check=True, env={"TCP_NODELAY": "1"}, capture_output=True)

        def failed_once() -> bool:  # the SEG is tried first and fails; the SR, queued after it, is held
            rows = _cli_json(config, "deliveries")
            return (len(rows) == 2 and all(r["state"] == "pending" and r["last_error"] for r in rows)
                    and any(r["attempts"] >= 1 for r in rows))

        wait_for(failed_once, 180, "a failed delivery attempt while the PACS is down", interval=1.0)
        rows = _cli_json(config, "deliveries")
        assert all("connection refused" in (r["last_error"] or "") for r in rows), rows
        with orthanc:  # the PACS comes back
            segs = wait_for(lambda: orthanc.find_series(study_uid, "SEG"), 120, "the SEG after the outage")
            wait_for(lambda: orthanc.find_series(study_uid, "SR"), 60, "the SR after the outage")
            wait_for(lambda: all(r["state"] == "sent" for r in _cli_json(config, "deliveries")), 30,
                     "the outbox to show sent")
            assert len(segs) == 1 and len(orthanc.series_instances(segs[0]["ID"])) == 1
            assert len(orthanc.get("/instances")) == 1 + 1  # exactly one SEG and one SR: nothing else


def test_failing_job_fails_with_its_reason_and_node_keeps_serving(tmp_path: Path, brain_study) -> None:
    # A broken model no longer gets this far (serve's pre-flight refuses it, tests/test_preflight.py):
    # the job fails here because the study lacks three of the model's four input series.
    port = free_port()
    config = write_node_config(
        tmp_path / "node.toml", state_dir=tmp_path / "state", port=port, model_file="builtin:brain-tumor",
        destination=None, stable_seconds=1.0,
        scheduler={"max_attempts": 2, "backoff_seconds": 0.5, "max_backoff_seconds": 1.0})
    with NodeProcess(config, port):
        subprocess.run(["/usr/bin/storescu", "-aet", "STORESCU", "-aec", "PACSNODE", "127.0.0.1", str(port),
                        *map(str, brain_study["T1"][:5])], check=True, env={"TCP_NODELAY": "1"},
                       capture_output=True)
        jobs = wait_for(lambda: [j for j in _cli_json(config, "jobs") if j["state"] == "failed"], 120,
                        "the job to fail")
        assert jobs[0]["attempts"] == 1, jobs[0]["last_error"]  # bad data: never retried
        assert "every model input channel needs a series, got no series for T1ce" in jobs[0]["last_error"]
        assert echo("127.0.0.1", port, "PACSNODE")
        status = subprocess.run([sys.executable, "-m", "pacsnode", "status", "--config", str(config), "--json"],
                                capture_output=True, text=True, check=True)
        units = json.loads(status.stdout)["units"]
        assert units[0]["state"] == "failed" and "no series for T1ce" in units[0]["reason"]
