"""``distill export CHECKPOINT --out model.onnx [--int8 --calibration DIR]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX with its model card (optionally int8)",
        description="Export a distillation checkpoint (student or teacher) to one ONNX file: deep supervision "
                    "off, KD adapters stripped, card embedded, ONNX Runtime checked against torch.")
    p.add_argument("checkpoint", help="checkpoint written by distill train-teacher / distill distill")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--card", help="JSON file with the model card (default: the card stored in the checkpoint)")
    p.add_argument("--name", help="override the card's name")
    p.add_argument("--version", help="override the card's version")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs torch check")
    p.add_argument("--int8", action="store_true", help="also write an int8 (QDQ) model next to --out")
    p.add_argument("--calibration", help="calibration windows: a folder of *.npy/*.npz or an nnU-Net dataset")
    p.add_argument("--calibration-windows", type=int, default=16)
    p.add_argument("--int8-min-channels", type=int, default=16,
                   help="quantize only convolutions with at least this many input and output channels")
    p.add_argument("--int8-exclude", nargs="*", default=[], help="ONNX node names to keep in fp32")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from distillation.checkpoint import load_checkpoint
    from distillation.export import (
        calibration_windows_from_dir,
        export_onnx,
        int8_report,
        quantize_int8,
        validate_card,
    )
    from distillation.networks import count_parameters

    ckpt = load_checkpoint(args.checkpoint)
    card = json.loads(Path(args.card).read_text()) if args.card else dict(ckpt.card)
    if not card:
        raise ValueError(f"a model card is required: the checkpoint {args.checkpoint} has none, pass --card FILE")
    if args.name:
        card["name"] = args.name
    if args.version:
        card["version"] = args.version
    net = ckpt.build_network(deep_supervision=False)
    provenance = dict(card.get("provenance") or {})
    provenance.setdefault("width_factor", ckpt.width_factor)
    provenance["parameters"] = count_parameters(net)
    card["provenance"] = provenance
    card = validate_card(card)
    report = export_onnx(net, card, args.out, opset=args.opset, check=not args.no_check)
    summary: dict[str, Any] = {"onnx": report.to_dict()}
    if args.int8:
        if not args.calibration:
            raise ValueError("--int8 needs --calibration DIR (preprocessed windows or an nnU-Net dataset)")
        windows = calibration_windows_from_dir(args.calibration, card, max_windows=args.calibration_windows)
        out8 = Path(args.out).with_name(Path(args.out).stem + ".int8.onnx")
        q = quantize_int8(args.out, out8, windows, min_channels=args.int8_min_channels,
                          nodes_to_exclude=args.int8_exclude)
        summary["int8"] = {**q.to_dict(), "comparison": int8_report(args.out, out8, windows[:4])}
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
