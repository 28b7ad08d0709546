"""A model past protobuf's 2 GiB limit, end to end: built, exported as ONNX external data, loaded by the
node from its path, one window run, peak RSS.

Five folds of nnU-Net's full-size brain PlainConvUNet at width 2 (every stage twice as wide: 64..640
features, ~123 M parameters a fold, ~2.5 GB of float32 weights in one graph), random weights. The
architecture is the 128x160x112 plans'; the card's window is smaller (``--window``, default 64^3, a
multiple of the total stride 32) so one window stays minutes, not an hour, on 2 shared cores.

    nice -n 10 .venv/bin/python benchmarks/nnunet_big_model.py export --work /work/bigmodel
    nice -n 10 .venv/bin/python benchmarks/nnunet_big_model.py load --work /work/bigmodel --backend onnxruntime
    nice -n 10 .venv/bin/python benchmarks/nnunet_big_model.py load --work /work/bigmodel --backend openvino
    rm -r /work/bigmodel   # ~2.5 GB

Each step prints one JSON line (seconds, sizes, peak RSS of its process, load average) and appends
it to docs/nnunet-fullsize.json under ``"big"``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from nnunet_fullsize import OUT, _load, card, network  # noqa: E402

NAME = "big-5fold-w2"


def _peak_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _record(row: dict, out: Path) -> None:
    row.update(peak_rss_mb=_peak_mb(), load_after=_load(), when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    rows = json.loads(out.read_text()) if out.is_file() else []
    rows.append({"big": row})
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(row), flush=True)


def export(work: Path, width: float, folds: int, window: int, out: Path) -> None:
    from distillation.export import export_onnx
    from distillation.nnunet.importer import FoldEnsemble

    row: dict = {"step": "export", "width": width, "folds": folds, "load_before": _load()}
    work.mkdir(parents=True, exist_ok=True)
    nets = [network(width, seed) for seed in range(folds)]
    params = sum(p.numel() for p in nets[0].parameters())
    c = card(NAME, folds, params)
    c["patch_size"] = [window] * 3
    t0 = time.perf_counter()
    report = export_onnx(FoldEnsemble(nets), c, work / f"{NAME}.onnx", check_cap=32)
    files = {p.name: p.stat().st_size for p in sorted(work.glob(f"{NAME}.onnx*"))}
    row.update(parameters_per_fold=params, parameters=params * folds, export_seconds=round(time.perf_counter() - t0, 1),
               files=files, max_abs_diff_vs_torch=report.max_abs_diff, check_shape=list(report.check_shape))
    _record(row, out)


def load(work: Path, backend: str, out: Path, size: int | None = None) -> None:
    from pacsnode.inference import Model

    row: dict = {"step": "load+window", "backend": backend, "load_before": _load()}
    t0 = time.perf_counter()
    model = Model.load(work / f"{NAME}.onnx", threads=2, backend=backend, precision="fp32")
    row.update(load_seconds=round(time.perf_counter() - t0, 1), peak_rss_after_load_mb=_peak_mb(),
               external_data=[e.to_dict() for e in model.card.external_data], ran_on=model.backend)
    shape = (size,) * 3 if size else model.card.patch_size
    window = np.random.default_rng(0).standard_normal((1, 4, *shape), dtype=np.float32)
    t0 = time.perf_counter()
    logits = model.predict(window)
    row.update(window=list(shape), window_seconds=round(time.perf_counter() - t0, 1),
               logits_finite=bool(np.isfinite(logits).all()))
    _record(row, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=["export", "load"])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--width", type=float, default=2.0)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--run-window", type=int, default=None, help="load: run this cube instead of the card's window")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.step == "export":
        export(args.work, args.width, args.folds, args.window, args.out)
    else:
        load(args.work, args.backend, args.out, args.run_window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
