"""Evidence for a reduced precision, written into the model card's ``validated_precisions``.

The node runs a model at bf16 or int8 only when its card records that precision (pacsnode
``ModelCard.check_precision``). This measures it: every labelled case of a held-out split is
run through the node's own inference at fp32 and at the reduced precision; per label, the
Dice against the reference labels at each precision; the entry keeps the mean and the worst
per-label change and the fraction of voxels whose label equals fp32's.

    python -m distillation.export.precision MODEL.onnx --dataset RAW --precision bf16 [--write]
    python -m distillation.export.precision MODEL-int8.onnx --fp32 MODEL.onnx --dataset RAW \\
        --precision int8 --write

For int8 the file is the quantized export (``distill export --int8``) and ``--fp32`` its float
original. ``--write`` rewrites the card in the file (a new sha256).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["measure_precision", "record_precision", "main"]


def _run_all(model: Any, dataset: Path, split: str, limit: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from distillation.evaluate.run import predict_cases

    return {case.identifier: (pred, ref) for case, pred, ref, _ in
            predict_cases(model, dataset, split, limit=limit, progress=False)}


def measure_precision(model_path: str | os.PathLike, dataset: str | os.PathLike, precision: str, *,
                      fp32_path: str | os.PathLike | None = None, backend: str = "auto", split: str = "Ts",
                      limit: int | None = None, threads: int = 2) -> dict[str, Any]:
    """The ``validated_precisions`` entry for ``precision`` (plus per-label Dice and timings under
    ``"details"``, which are not written to the card)."""
    from distillation.evaluate.metrics import dice
    from pacsnode.inference import Model

    dataset = Path(dataset)
    reduced = Model.load(model_path, threads=threads, backend=backend, precision=precision, measuring_evidence=True)
    reference = Model.load(fp32_path or model_path, threads=threads, backend=backend, precision="fp32")
    t0 = time.perf_counter()
    base = _run_all(reference, dataset, split, limit)
    t1 = time.perf_counter()
    low = _run_all(reduced, dataset, split, limit)
    t2 = time.perf_counter()
    labels = {lab.name: lab.value for lab in reference.card.labels}
    per_label: dict[str, dict[str, float]] = {}
    same = total = 0
    for name, value in labels.items():
        d32 = [dice(base[i][0] == value, base[i][1] == value) for i in base]
        dlow = [dice(low[i][0] == value, low[i][1] == value) for i in base]
        per_label[name] = {"fp32": float(np.mean(d32)), precision: float(np.mean(dlow)),
                           "change": float(np.mean(dlow) - np.mean(d32))}
    for i in base:
        same += int((base[i][0] == low[i][0]).sum())
        total += base[i][0].size
    changes = [v["change"] for v in per_label.values()]
    return {
        "precision": precision, "backend": reduced.backend, "cases": len(base),
        "dataset": f"{dataset.name} images{split}", "dice_change": round(float(np.mean(changes)), 6),
        "worst_dice_change": round(float(min(changes)), 6), "voxel_agreement": round(same / total, 6),
        "details": {"per_label": per_label, "seconds_per_case": {"fp32": (t1 - t0) / len(base),
                                                                  precision: (t2 - t1) / len(base)},
                    "fp32_backend": reference.backend, "self_check": reduced.parity.describe()
                    if reduced.parity else "reference runtime"},
    }


def record_precision(model_path: str | os.PathLike, entry: dict[str, Any]) -> dict[str, Any]:
    """Write ``entry`` (without ``details``) into the file's card, replacing one for the same precision."""
    from distillation.export.card import validate_card
    from distillation.export.onnx_export import read_card, write_card

    card = read_card(model_path)
    kept = [e for e in card.get("validated_precisions", []) if e["precision"] != entry["precision"]]
    card["validated_precisions"] = [*kept, {k: v for k, v in entry.items() if k != "details"}]
    card = validate_card(card)
    write_card(model_path, card)
    return card


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distillation.export.precision", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="the .onnx file to validate (the int8 export for --precision int8)")
    ap.add_argument("--dataset", required=True, type=Path, help="nnU-Net raw dataset with held-out labelled cases")
    ap.add_argument("--precision", required=True, choices=["bf16", "int8"])
    ap.add_argument("--fp32", type=Path, help="the float model the int8 file was quantized from")
    ap.add_argument("--backend", default="auto", choices=["auto", "openvino", "onnxruntime"])
    ap.add_argument("--split", default="Ts")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="record the entry in the model file's card")
    args = ap.parse_args(argv)
    if args.precision == "int8" and args.fp32 is None:
        print("error: --precision int8 needs --fp32 FLOAT_MODEL (the reference)", file=sys.stderr)
        return 2
    entry = measure_precision(args.model, args.dataset, args.precision, fp32_path=args.fp32, backend=args.backend,
                              split=args.split, limit=args.limit, threads=args.threads)
    print(json.dumps(entry, indent=2))
    if args.write:
        record_precision(args.model, entry)
        print(f"recorded {args.precision} in {args.model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
