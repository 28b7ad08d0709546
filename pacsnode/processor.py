"""The processing stage: a queued job → volumes → model → SEG / SR files → outbox rows.

:class:`Processor` is the node's job work (``JobRunner.work``). For one job it reads the
unit's instances from the spool, picks each model input's series by the card's
selectors, runs the model through :mod:`pacsnode.inference`, writes the outputs the route
asks for into ``<state_dir>/results/<job id>/`` and records one pending delivery per
output and destination. Everything it writes is keyed by the job and the unit's
generation: the SEG's and SR's UIDs are derived from (unit UID, model sha256,
generation), so a re-run after a crash produces the same instances (the PACS sees a
replacement, never a duplicate) and the ledger's outbox rows are the same rows.

Failures keep their kind for the job runner (:func:`pacsnode.scheduler.failure_kind`): a
unit that is not a clean volume, or a model input without its series, raises
:class:`~pacsnode.errors.VolumeError` (the job fails at once, no retry); no space while
writing results raises ``OSError`` ENOSPC (the job waits for space). A failed write
removes its staging folder, so a full disk is not filled further by half results.

The SEG goes out first: its folder is put in place and its outbox rows handed to the
dispatcher before the SR is built (which waits up to ``SEG_HEAD_START_S`` for the SEG's first
attempts, so that building it does not slow the sending), which is then added to the folder (temp file and rename)
with its own rows; ``run.json`` comes last. A job that fails after its SEG was queued
writes the same SEG again on its next start (same UIDs: the PACS sees a replacement).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from pacsnode.config import Route, Settings
from pacsnode.errors import InferenceError
from pacsnode.inference import Model, run
from pacsnode.ledger import JobRow, Ledger
from pacsnode.results import segment_volumes_ml
from pacsnode.results.nifti import write_nifti
from pacsnode.results.run_outputs import seg_for_run, sr_for_run
from pacsnode.states import DeliveryState
from pacsnode.volume import Volume, read_series, scan_series, select_series
from pacsnode.volume.select import input_selectors

__all__ = ["Processor", "RunSummary", "RUN_SUMMARY", "result_uids"]

LOG = logging.getLogger(__name__)

SEG_HEAD_START_S = 2.0
"""At most this long the SR waits for the SEG's first delivery attempts (sent, failed or held)."""

RUN_SUMMARY = "run.json"
"""Per-job summary written beside the results: timings, windows, segment volumes."""


@dataclass(frozen=True)
class RunSummary:
    """What one job did, written as ``run.json`` beside its outputs."""

    job_id: int
    unit_uid: str
    generation: int
    model: str
    model_version: str
    model_sha256: str
    channels: dict[str, str]  # channel name → SeriesInstanceUID
    shape: tuple[int, int, int]
    windows: int
    timings: dict[str, float]
    volumes_ml: dict[str, float]
    outputs: dict[str, str]  # kind → file name
    finished_at: float


def result_uids(unit_uid: str, model_sha256: str, generation: int, kind: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of one output, stable across re-runs of a job."""
    base = [unit_uid, model_sha256, str(generation), kind]
    return generate_uid(entropy_srcs=[*base, "series"]), generate_uid(entropy_srcs=[*base, "instance"])


class Processor:
    """Runs one job: ``processor(job) -> result paths`` (the scheduler's job work)."""

    def __init__(self, settings: Settings, ledger: Ledger, *,
                 on_outputs: Callable[[JobRow, Sequence[int]], None] | None = None,
                 observe: Callable[[str, float], None] | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.results_dir = Path(settings.node.state_dir) / "results"
        self.on_outputs = on_outputs
        self.observe = observe or (lambda _name, _seconds: None)
        # A cluster's workers: one results folder per start (``<job>.<starts>``), and outbox rows
        # only while this start still holds the job (a worker that lost it queues nothing).
        self.per_attempt = False
        self._models: dict[str, Model] = {}
        self._lock = threading.Lock()

    # --- models -------------------------------------------------------------------------------

    def model(self, name: str) -> Model:
        """The loaded model of a [models] entry (one ONNX Runtime session per model, reused)."""
        entry = self.settings.models[name]
        file = self.settings.model_file(name)
        with self._lock:
            cached = self._models.get(name)
            if cached is None or not _same_file(cached.path, file):
                cached = Model.load(file, threads=entry.threads, backend=entry.backend,
                                    precision=entry.precision)
                self._models[name] = cached
            return cached

    def warm_up(self) -> None:
        """Load every configured model (backend choice and self-check) and highdicom's standard
        tables, so the first job does not pay for them; a model that fails here fails its jobs later."""
        from pacsnode.results.iod_cache import warm_up as warm_results

        warm_results()
        for name in self.settings.models:
            try:
                self.model(name)
            except Exception as exc:  # the job that needs the model records the reason
                LOG.warning("model %s not loaded ahead of its first job: %s", name, exc)

    # --- one job ------------------------------------------------------------------------------

    def __call__(self, job: JobRow) -> list[str]:
        route = self._route(job)
        model = self.model(job.model_name)
        t0 = time.perf_counter()
        volumes, channels = self._volumes(job, model)
        read_s = time.perf_counter() - t0
        prediction = run(model, volumes, return_probabilities=route.seg_type == "fractional")
        timings = {"read": read_s, **prediction.timings}
        self.observe("inference", sum(prediction.timings.values()))

        folder = f"{job.id}.{job.starts}" if self.per_attempt else str(job.id)
        out_dir = self.results_dir / folder
        staging = self.results_dir / f".{folder}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        card = model.card
        t1 = time.perf_counter()
        try:  # a failed write (e.g. no space left) must not leave half a results folder behind
            staging.mkdir(parents=True)
            outputs, seg = self._write_first(job, route, model, volumes, prediction, staging)
            _replace_dir(staging, out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        timings["seg"] = time.perf_counter() - t1
        # The SEG is on its way while the SR is built: the radiologist's overlay does not wait
        # for the volume report. A failure from here on fails the job as before; its next start
        # writes the same SEG (same UIDs) and the same outbox rows.
        delivery_ids = self._queue(job, route, out_dir, outputs)
        if "sr" in route.outputs and seg is not None:
            self._head_start(delivery_ids)
            t2 = time.perf_counter()
            series_uid, sop_uid = result_uids(job.unit_uid, model.sha256, job.generation, "sr")
            sr = sr_for_run(seg, volumes, prediction, card, model_sha256=model.sha256,
                            series_instance_uid=series_uid, sop_instance_uid=sop_uid)
            sr_out = {"sr": _save_into(sr, out_dir, "sr.dcm")}
            delivery_ids += self._queue(job, route, out_dir, sr_out)
            outputs.update(sr_out)
            timings["sr"] = time.perf_counter() - t2
        timings["results"] = time.perf_counter() - t1
        self.observe("results", timings["results"])

        volumes_ml = segment_volumes_ml(prediction.labels, card, affine=prediction.affine)
        summary = RunSummary(
            job_id=job.id, unit_uid=job.unit_uid, generation=job.generation, model=card.name,
            model_version=card.version, model_sha256=model.sha256, channels=channels,
            shape=volumes[0].shape, windows=prediction.windows,
            timings={k: round(v, 4) for k, v in timings.items()},
            volumes_ml={lb.name: round(float(volumes_ml.get(lb.value, 0.0)), 3) for lb in card.labels},
            outputs={kind: path.name for kind, path in outputs.items()}, finished_at=time.time(),
        )
        _write_into(out_dir, RUN_SUMMARY, json.dumps(asdict(summary), indent=2).encode())
        paths = [out_dir / p.name for p in outputs.values()]
        LOG.info("job %s: %s on unit %s → %s; %d deliveries queued", job.id, card.name, job.unit_uid,
                 ", ".join(outputs), len(delivery_ids))
        return [str(p) for p in paths] + [str(out_dir / RUN_SUMMARY)]

    def _head_start(self, ids: Sequence[int]) -> None:
        """Let the SEG's first delivery attempts run before the SR is built, for at most
        SEG_HEAD_START_S: both are Python and share the interpreter, and the SR built alongside
        slowed the SEG's sending ~4x (0.15 → 0.6 s on the demo study)."""
        deadline = time.monotonic() + SEG_HEAD_START_S
        waiting = list(ids)
        while waiting and time.monotonic() < deadline:
            rows = [self.ledger.delivery(i) for i in waiting]
            waiting = [r.id for r in rows if r.state is DeliveryState.PENDING and not r.attempts
                       and not r.last_error]
            if waiting:
                time.sleep(0.02)

    def _queue(self, job: JobRow, route: Route, out_dir: Path, outputs: dict[str, Path]) -> list[int]:
        """One outbox row per DICOM output and destination, handed to the dispatcher at once."""
        ids = []
        for kind, path in outputs.items():
            if kind == "nifti":
                continue
            for dest in route.destinations:
                ids.append(self.ledger.add_delivery(
                    job.id, dest, out_dir / path.name, fence=job.starts if self.per_attempt else None).id)
        if self.on_outputs is not None and ids:
            self.on_outputs(job, ids)
        return ids

    def _route(self, job: JobRow) -> Route:
        for route in self.settings.routes:
            if route.name == job.route:
                return route
        valid = ", ".join(r.name for r in self.settings.routes)
        raise InferenceError(f"job {job.id} names route {job.route!r} which the config no longer has; "
                             f"valid: {valid}")

    def _volumes(self, job: JobRow, model: Model) -> tuple[list[Volume], dict[str, str]]:
        files = self.ledger.instance_paths(job.unit_uid)
        if not files:
            raise InferenceError(f"unit {job.unit_uid} must have instances in the spool, got none")
        found = scan_series(files)
        entry = self.settings.models[job.model_name]
        chosen = select_series(found, input_selectors(model.card.inputs, entry.inputs, model=job.model_name))
        volumes = [read_series(chosen[ch.name].files) for ch in model.card.inputs]
        return volumes, {name: info.series_instance_uid for name, info in chosen.items()}

    def _write_first(self, job: JobRow, route: Route, model: Model, volumes: Sequence[Volume],
                     prediction: Any, out: Path) -> tuple[dict[str, Path], Any]:
        """The outputs that go out first (SEG, NIfTI) into ``out``, and the SEG the SR references."""
        written: dict[str, Path] = {}
        seg = None
        if "seg" in route.outputs or "sr" in route.outputs:
            series_uid, sop_uid = result_uids(job.unit_uid, model.sha256, job.generation, "seg")
            seg = seg_for_run(volumes, prediction, model.card, model_sha256=model.sha256,
                              seg_type=route.seg_type, series_instance_uid=series_uid,
                              sop_instance_uid=sop_uid, device_serial_number=self.settings.node.ae_title)
            if "seg" in route.outputs:
                written["seg"] = _save(seg, out / "seg.dcm")
        if "nifti" in route.outputs:
            written["nifti"] = write_nifti(prediction.labels, prediction.affine, out / "labels.nii.gz")
        return written, seg


def _same_file(loaded: Path, file: str) -> bool:
    if file.startswith("builtin:"):
        return loaded.stem == file.removeprefix("builtin:")
    return loaded.resolve() == Path(file).resolve()


def _save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    with path.open("rb") as fh:
        os.fsync(fh.fileno())
    return path


def _write_into(folder: Path, name: str, data: bytes) -> Path:
    """``folder/name`` in place whole or not at all (temp file, fsync, rename, directory fsync)."""
    final = folder / name
    tmp = folder / f".{name}.partial"
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return final


def _save_into(ds: pydicom.Dataset, folder: Path, name: str) -> Path:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return _write_into(folder, name, buf.getvalue())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(staging: Path, final: Path) -> None:
    """Swap a finished results folder in place of an older run's (never half of each)."""
    for f in staging.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
    _fsync_dir(final.parent)
