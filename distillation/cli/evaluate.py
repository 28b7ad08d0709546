"""``distill evaluate MODEL.onnx --dataset DIR [--split Ts] --out results.json``."""

from __future__ import annotations

import argparse
from typing import Any

from distillation.cli.output import add_json_option, emit, table

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
    p.add_argument("--out", required=True, help="results JSON (per case and summary, full precision)")
    p.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="NSD tolerance in mm (default 1)")
    p.add_argument("--limit", type=int, help="evaluate only the first N cases")
    p.add_argument("--save-predictions", help="folder for the predicted label maps (npz)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_option(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from distillation.evaluate import evaluate_model

    result = evaluate_model(args.model, args.dataset, args.split, threads=args.threads,
                            nsd_tolerance_mm=args.nsd_tolerance, limit=args.limit,
                            progress=not args.no_progress, save_predictions=args.save_predictions)
    result.write(args.out)
    brief = {name: {"dice": s["dice"]["mean"], "hd95": s["hd95"]["mean"], "nsd": s["nsd"]["mean"],
                    "hd95_inf": s["hd95"]["n_inf"], "n": s["n"]}
             for name, s in result.summary.items()}
    rows = [(name, b["dice"], b["hd95"], b["nsd"], b["hd95_inf"], b["n"]) for name, b in brief.items()]
    text = (f"{len(result.cases)} cases of {args.dataset} (images{args.split}), "
            f"{result.seconds_per_case:.3g} s per case; means over cases, written to {args.out}\n\n"
            + table(["structure", "Dice", "HD95 mm", f"NSD@{args.nsd_tolerance:g}mm", "HD95 inf", "cases"], rows))
    emit(args, {"out": args.out, "cases": len(result.cases), "seconds_per_case": result.seconds_per_case,
                "summary": brief}, text)
    return 0
