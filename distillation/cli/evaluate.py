"""``distill evaluate MODEL.onnx --dataset DIR [--split Ts] --out results.json``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate", help="Dice / HD95 / NSD of an exported model run through the node's inference",
        description="Run MODEL.onnx with pacsnode's inference on an nnU-Net raw dataset split "
                    "(images{split}/labels{split}) and write per-case and summary metrics as JSON. "
                    "Empty masks: both empty -> Dice 1, HD95 0, NSD 1; one empty -> Dice 0, NSD 0, "
                    "HD95 inf (excluded from means, counted).")
    p.add_argument("model", help="exported .onnx with its model card")
    p.add_argument("--dataset", required=True, help="nnU-Net raw dataset folder")
    p.add_argument("--split", default="Ts", choices=["Ts", "Tr"], help="images/labels split (default Ts)")
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="NSD tolerance in mm (default 1)")
    p.add_argument("--limit", type=int, help="evaluate only the first N cases")
    p.add_argument("--save-predictions", help="folder for the predicted label maps (npz)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from distillation.evaluate import evaluate_model

    result = evaluate_model(args.model, args.dataset, args.split, threads=args.threads,
                            nsd_tolerance_mm=args.nsd_tolerance, limit=args.limit,
                            progress=not args.no_progress, save_predictions=args.save_predictions)
    result.write(args.out)
    brief = {name: {"dice": s["dice"]["mean"], "hd95": s["hd95"]["mean"], "nsd": s["nsd"]["mean"]}
             for name, s in result.summary.items()}
    sys.stdout.write(json.dumps({"out": args.out, "cases": len(result.cases), "summary": brief}, indent=2) + "\n")
    return 0
