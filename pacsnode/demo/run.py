"""`pacsnode demo`: the whole node on loopback, from a PACS's C-STORE to the SEG in the PACS.

1. start a PACS: Orthanc on free ports (DCMTK's storescp where Orthanc is missing, and a
   pynetdicom storage SCP where DCMTK is missing too: the demo needs only `pip install pacsnode`);
2. start a node (`pacsnode serve`) whose route sends results to that PACS;
3. write a synthetic brain MR study (T1, T1ce, T2, FLAIR; ground truth known), shipped in the
   package (:mod:`pacsnode.demo.phantom`);
4. the PACS sends the study to the node by C-STORE (Orthanc's /modalities/…/store);
5. wait for the SEG and the SR to arrive in the PACS;
6. print what was received, the time per stage, segment volumes, Dice against the
   phantom's truth, and where to look.

A failure is a :class:`DemoError` (exit 1) naming the stage, and where its files and logs are;
a temporary folder is removed when the demo fails before it wrote anything worth reading.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from pacsnode.demo.orthanc import OrthancServer, RemoteModality, orthanc_available
from pacsnode.demo.pacs import STORESCP_BIN, PythonStoreSCP, StoreSCP
from pacsnode.demo.phantom import SHIPPED_SEED, SHIPPED_SPACING, load_case, write_study
from pacsnode.demo.scenario import NodeProcess, free_port, wait_for, write_node_config
from pacsnode.errors import PacsnodeError
from pacsnode.ledger import Ledger
from pacsnode.processor import RUN_SUMMARY

__all__ = ["DemoError", "DemoResult", "run_demo"]


class DemoError(PacsnodeError):
    """The demo did not finish (a runtime failure: exit 1)."""

    exit_code = 1


@dataclass
class DemoResult:
    """What the demo saw, for the summary and for tests."""

    pacs: str
    instances_sent: int
    series: dict[str, int]
    stages: dict[str, float]
    run: dict[str, Any]
    dice: dict[str, float]
    seg_path: Path
    sr_path: Path | None
    workdir: Path
    where: list[str] = field(default_factory=list)


def _say(msg: str) -> None:
    print(msg, flush=True)


def _model_spacing(model_file: str) -> tuple[float, float, float]:
    from pacsnode.inference import Model

    card = Model.load(model_file, threads=1).card
    return tuple(float(s) for s in card.target_spacing)  # type: ignore[return-value]


def _dice(truth: np.ndarray, pred: np.ndarray, values: list[int]) -> float:
    a, b = np.isin(truth, values), np.isin(pred, values)
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)


def _seg_labels(seg_blob: bytes, source_uids: list[str], card_values: list[int]) -> np.ndarray:
    import highdicom as hd

    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(seg_blob)))
    stacked = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_uids,
                                                combine_segments=False)  # [k, i, j, segments]
    labels = np.zeros(stacked.shape[:3], np.uint8)
    for n, value in enumerate(card_values):
        labels[stacked[..., n] > 0] = value
    return labels


SEG_STORED = "last instance → SEG stored in PACS"
ALL_STORED = "total: last instance → SEG and SR stored in PACS"


def _stages(state_dir: Path) -> tuple[dict[str, float], dict[str, Any]]:
    ledger = Ledger(state_dir / "ledger.sqlite")
    try:
        unit = ledger.units()[0]
        job = ledger.jobs()[0]
        deliveries = ledger.deliveries(job_id=job.id)
    finally:
        ledger.close()
    run = json.loads((state_dir / "results" / str(job.id) / RUN_SUMMARY).read_text())
    last = unit.last_received_at
    done = max(d.updated_at for d in deliveries)
    seg_done = max((d.updated_at for d in deliveries if Path(d.dataset_path).name == "seg.dcm"), default=done)
    t = run["timings"]
    stages = {
        "receive (first → last instance)": last - unit.first_received_at,
        "stable timer": (unit.completed_at or last) - last,
        "read series": t.get("read", 0.0),
        "preprocess": t.get("align", 0.0) + t.get("preprocess", 0.0),
        "network (sliding window)": t.get("network", 0.0),
        "resample back + postprocess": t.get("resample_back", 0.0) + t.get("postprocess", 0.0),
        "SEG": t.get("seg", 0.0),
    }
    timer = stages["stable timer"]
    stages["routing, queue, C-STORE of the SEG to the PACS"] = max(
        0.0, seg_done - last - timer - sum(v for k, v in stages.items() if k not in ("stable timer",
                                                                                  "receive (first → last instance)")))
    stages[SEG_STORED] = seg_done - last
    stages["SR (built once the SEG is on its way)"] = t.get("sr", 0.0)
    stages[ALL_STORED] = done - last
    return stages, run


def run_demo(*, model_file: str = "builtin:brain-tumor", workdir: Path | None = None, seed: int = SHIPPED_SEED,
             keep: bool = False, use_orthanc: bool | None = None, timeout: float = 600.0) -> DemoResult:
    """Run the scenario; raises :class:`DemoError` naming the stage that did not finish (a bad
    model or seed is a :class:`PacsnodeError` raised before anything is written)."""
    spacing = _model_spacing(model_file)
    case = load_case(seed, SHIPPED_SPACING if seed == SHIPPED_SEED else spacing)
    temporary = workdir is None
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="pacsnode-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(case, model_file, work, keep, use_orthanc, timeout)
    except PacsnodeError as exc:
        raise DemoError(f"{exc} (the demo's files are in {work})") from None
    except BaseException:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
        raise


def _run(case: Any, model_file: str, work: Path, keep: bool, use_orthanc: bool | None,
         timeout: float) -> DemoResult:
    orthanc_ok = orthanc_available() if use_orthanc is None else use_orthanc
    _say(f"pacsnode demo — working in {work}")
    _say(f"1/5 synthetic brain MR study (seed {case.seed}, {case.spacing[0]:g} mm) ...")
    study = write_study(case, work / "study")
    files = [f for series in study.values() for f in series]
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    _say(f"    {len(files)} instances in {len(study)} series: "
         + ", ".join(f"{k} ({len(v)})" for k, v in study.items()))

    node_port, pacs_dicom, pacs_http = free_port(), free_port(), free_port()
    state = work / "node-state"
    pacs: Any
    if orthanc_ok:
        pacs = OrthancServer(work / "orthanc", pacs_dicom, pacs_http,
                             modalities=[RemoteModality("pacsnode", "PACSNODE", "127.0.0.1", node_port)])
        pacs_name = f"Orthanc on 127.0.0.1:{pacs_dicom} (web {pacs.url})"
    elif STORESCP_BIN.exists():
        pacs = StoreSCP(work / "pacs", pacs_dicom)
        pacs_name = f"DCMTK storescp on 127.0.0.1:{pacs_dicom} (Orthanc not installed)"
    else:
        pacs = PythonStoreSCP(work / "pacs", pacs_dicom)
        pacs_name = f"a pynetdicom storage SCP on 127.0.0.1:{pacs_dicom} (neither Orthanc nor DCMTK installed)"
    config = write_node_config(work / "node.toml", state_dir=state, port=node_port, model_file=model_file,
                               destination=(pacs.ae_title, "127.0.0.1", pacs_dicom), stable_seconds=3.0)
    node = NodeProcess(config, node_port, log_path=work / "node.log")
    _say(f"2/5 PACS: {pacs_name}")
    try:
        pacs.start()
        _say(f"3/5 node: pacsnode serve on 127.0.0.1:{node_port} (config {config}, log {node.log_path})")
        node.start()
        _say("4/5 the PACS sends the study to the node (C-STORE) ...")
        if orthanc_ok:
            pacs.upload(files)
            study_id = pacs.study_id(study_uid)
            pacs.store_to("pacsnode", [study_id])
        else:
            sent = subprocess.run([sys.executable, "-m", "pacsnode", "send", str(work / "study"), "--to",
                                   f"127.0.0.1:{node_port}", "--aec", "PACSNODE"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if sent.returncode:
                raise PacsnodeError(f"sending the study to the node failed: {sent.stderr.strip()}")
        _say("5/5 waiting for the node's SEG and SR in the PACS ...")
        seg_blob, sr_blob = _wait_results(pacs, study_uid, orthanc_ok, node, timeout)
        node.stop()
        stages, run = _stages(state)
    finally:
        node.stop()
        pacs.stop()

    from pacsnode.inference import Model
    from pacsnode.volume import read_series

    card = Model.load(model_file, threads=1).card
    values = [lb.value for lb in card.labels]
    reference = read_series(study[card.inputs[0].name])
    pred = _seg_labels(seg_blob, [str(ds.SOPInstanceUID) for ds in reference.datasets], values)
    dice = {lb.name: _dice(case.labels, pred, [lb.value]) for lb in card.labels}
    if set(values) == {1, 2, 3}:
        dice.update({"whole tumor": _dice(case.labels, pred, [1, 2, 3]),
                     "tumor core": _dice(case.labels, pred, [2, 3])})
    seg_path, sr_path = work / "received-seg.dcm", None
    seg_path.write_bytes(seg_blob)
    if sr_blob is not None:
        sr_path = work / "received-sr.dcm"
        sr_path.write_bytes(sr_blob)
    where = [f"SEG as stored by the PACS: {seg_path}", f"node state and results: {state}"]
    if orthanc_ok and keep:
        where.insert(0, f"re-open the PACS: /usr/sbin/Orthanc {work / 'orthanc' / 'orthanc.json'} "
                        f"then {pacs.explorer_url}")
    result = DemoResult(pacs=pacs_name, instances_sent=len(files),
                        series={k: len(v) for k, v in study.items()}, stages=stages, run=run, dice=dice,
                        seg_path=seg_path, sr_path=sr_path, workdir=work, where=where)
    _print_summary(result)
    if not keep:
        shutil.rmtree(work / "study", ignore_errors=True)
    return result


def _wait_results(pacs: Any, study_uid: str, orthanc_ok: bool, node: NodeProcess,
                  timeout: float) -> tuple[bytes, bytes | None]:
    def failed_job() -> None:
        if node.proc is not None and node.proc.poll() is not None:
            raise PacsnodeError(f"the node stopped (exit {node.proc.returncode}); see {node.log_path}")

    if orthanc_ok:
        def both() -> tuple[list, list] | None:
            failed_job()
            segs, srs = pacs.find_series(study_uid, "SEG"), pacs.find_series(study_uid, "SR")
            return (segs, srs) if segs and srs else None

        segs, srs = wait_for(both, timeout, "the SEG and SR in Orthanc", interval=0.5)
        seg = pacs.instance_file(pacs.series_instances(segs[0]["ID"])[0])
        sr = pacs.instance_file(pacs.series_instances(srs[0]["ID"])[0])
        return seg, sr

    def files() -> tuple[bytes, bytes] | None:
        failed_job()
        found = {p.name[:2]: p for p in pacs.directory.rglob("*") if p.is_file()}
        if "SG" in found and "SR" in found:
            return found["SG"].read_bytes(), found["SR"].read_bytes()
        return None

    return wait_for(files, timeout, "the SEG and SR at the PACS", interval=0.5)


def _print_summary(r: DemoResult) -> None:
    run = r.run
    _say("")
    _say("=" * 72)
    _say("pacsnode demo: done — the SEG and the SR are in the PACS")
    _say("=" * 72)
    _say(f"received   {r.instances_sent} instances, "
         + ", ".join(f"{k} {v}" for k, v in r.series.items()))
    _say(f"model      {run['model']} {run['model_version']} (sha256 {run['model_sha256'][:12]}), "
         f"{run['windows']} windows on a {'×'.join(map(str, run['shape']))} grid")
    _say("time per stage (seconds)")
    for name, seconds in r.stages.items():
        _say(f"  {name:<48} {seconds:8.2f}")
    _say("segment volumes (from the SR's source, mL)")
    for name, ml in run["volumes_ml"].items():
        _say(f"  {name:<40} {ml:8.2f}")
    _say("Dice against the phantom's ground truth")
    for name, d in r.dice.items():
        _say(f"  {name:<40} {d:8.3f}")
    _say("where to look")
    for line in r.where:
        _say(f"  {line}")
    _say("Synthetic data and a model trained on phantoms: not for clinical use.")
