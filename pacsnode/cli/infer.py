"""`pacsnode infer SERIES_DIR... --model FILE --out DIR`: segment series, write a NIfTI label map."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pacsnode.inference import Model, Prediction, run
from pacsnode.results.nifti import write_nifti
from pacsnode.volume import Volume, read_series, select_series

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="run a model on series directories (or a study directory) and write "
                                     "the label map as NIfTI")
    p.add_argument("series", nargs="+", metavar="SERIES_DIR",
                   help="series directories, or one study directory; each card input is found by its selector")
    p.add_argument("--model", required=True, help="model .onnx file or builtin:NAME")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    p.add_argument("--backend", choices=["auto", "openvino", "onnxruntime"], default="auto",
                   help="runtime (default auto: the fastest installed one that passes the parity self-check)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"], default="auto",
                   help="auto (default: bf16 where the card validated it and this CPU runs it, else fp32); "
                        "bf16 or int8 only where the model card records evidence for it")
    p.add_argument("--probabilities", action="store_true", help="also write per-class probabilities (float32)")
    p.add_argument("--seg", choices=["binary", "fractional", "labelmap"], nargs="?", const="binary",
                   help="also write a DICOM SEG (default BINARY) and its TID 1500 volume SR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_infer)


def _infer(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    model = Model.load(args.model, threads=args.threads, backend=args.backend, precision=args.precision)
    t_load = time.perf_counter() - t0
    card = model.card
    t0 = time.perf_counter()
    chosen = select_series(args.series, card.inputs)
    volumes: list[Volume] = [read_series(chosen[ch.name].files) for ch in card.inputs]
    t_read = time.perf_counter() - t0
    bar = None if args.no_progress else tqdm(total=0, unit="window", desc=f"{card.name}", leave=False)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    try:
        pred = run(model, volumes, return_probabilities=args.probabilities or args.seg == "fractional",
                   progress=progress)
    finally:
        if bar is not None:
            bar.close()
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{card.name}_{volumes[0].series_instance_uid}")
    path = write_nifti(pred.labels, pred.affine, args.out / f"{stem}_labels.nii.gz")
    if pred.probabilities is not None:
        write_nifti(pred.probabilities, pred.affine, args.out / f"{stem}_probabilities.nii.gz")
    if args.seg:
        _write_dicom(model, volumes, pred, args.seg, args.out / f"{stem}_seg.dcm", args.out / f"{stem}_sr.dcm")
    t_write = time.perf_counter() - t0
    timings = {"load model": t_load, "read": t_read, **pred.timings, "write": t_write}
    total = sum(timings.values())
    print(f"wrote {path}")
    print(f"  series   {', '.join(f'{ch.name}={v.series_instance_uid}' for ch, v in zip(card.inputs, volumes, strict=True))}")
    print(f"  grid     {' × '.join(str(s) for s in pred.labels.shape)} at "
          f"{' × '.join(f'{s:g}' for s in volumes[0].spacing)} mm, {pred.windows} window(s)")
    print(f"  runtime  {model.backend} {model.precision}, {model.threads} thread(s)"
          + (f", self-check {model.parity.describe()}" if model.parity else " (the reference)")
          + "".join(f"; passed over {r}" for r in model.rejected))
    counts = np.bincount(pred.labels.ravel(), minlength=256)
    for lab in card.labels:
        print(f"  label {lab.value:>3} {lab.name:<18} {int(counts[lab.value]):>10} voxels")
    print("  timings  " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()) + f", total {total:.2f} s")
    return 0



def _write_dicom(model: Model, volumes: list[Volume], pred: Prediction, seg_type: str, seg_path: Path,
                 sr_path: Path) -> None:
    from pacsnode.results.run_outputs import seg_for_run, sr_for_run

    seg = seg_for_run(volumes, pred, model.card, model_sha256=model.sha256, seg_type=seg_type)
    seg.save_as(seg_path, enforce_file_format=True)
    sr = sr_for_run(seg, volumes, pred, model.card, model_sha256=model.sha256)
    sr.save_as(sr_path, enforce_file_format=True)
    print(f"wrote {seg_path}")
    print(f"wrote {sr_path}")
