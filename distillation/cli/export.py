"""``distill export CHECKPOINT --out model.onnx [card options] [--int8 --calibration DIR]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from distillation.cli.card_options import add_card_options, apply_card_options
from distillation.cli.output import add_json_option, emit, fields

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX with its model card (optionally int8)",
        description="Export a distillation checkpoint (student or teacher) to one ONNX file: deep supervision "
                    "off, KD adapters stripped, card embedded, ONNX Runtime checked against torch. The card's "
                    "site-specific fields (series selectors, label codes) can be set here; the file is "
                    "written readable by all (mode 0644 under umask 022).")
    p.add_argument("checkpoint", help="checkpoint written by distill train-teacher / distill distill")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--card", help="JSON file with the whole model card (default: the card stored in the "
                                  "checkpoint)")
    p.add_argument("--name", help="override the card's name")
    p.add_argument("--version", help="override the card's version")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs torch check")
    p.add_argument("--int8", action="store_true", help="also write an int8 (QDQ) model next to --out")
    p.add_argument("--calibration", help="calibration windows: a folder of *.npy/*.npz or an nnU-Net dataset")
    p.add_argument("--calibration-windows", type=int, default=16,
                   help="number of calibration windows for --int8 (default 16)")
    p.add_argument("--int8-min-channels", type=int, default=16,
                   help="quantize only convolutions with at least this many input and output channels")
    p.add_argument("--int8-exclude", nargs="*", default=[], help="ONNX node names to keep in fp32")
    add_card_options(p)
    add_json_option(p)
    p.set_defaults(func=_run)


def _read_card(path: str) -> dict[str, Any]:
    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--card must be an existing JSON file, got {path!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--card {path} must hold valid JSON: {exc}") from None
    if not isinstance(card, dict):
        raise ValueError(f"--card {path} must hold a JSON object, got {type(card).__name__}")
    return card


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

    if args.int8 and not args.calibration:
        raise ValueError("--int8 needs --calibration DIR (preprocessed windows or an nnU-Net dataset)")
    ckpt = load_checkpoint(args.checkpoint)
    card = _read_card(args.card) if args.card else dict(ckpt.card)
    if not card:
        raise ValueError(f"a model card is required: the checkpoint {args.checkpoint} has none, pass --card FILE")
    card = apply_card_options(card, args)
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
    data: dict[str, Any] = {"onnx": report.to_dict(), "card": {
        "name": card["name"], "version": card["version"],
        "inputs": {c["name"]: c["series_description"] for c in card["inputs"]},
        "labels": {str(lab["value"]): f"{lab['name']}: {lab['type']['scheme']} {lab['type']['value']} "
                                      f"\"{lab['type']['meaning']}\"" for lab in card["labels"]}}}
    rows: list[tuple[str, Any]] = [
        ("model", report.path), ("name", f"{card['name']} {card['version']}"), ("parameters", report.parameters),
        ("sha256", report.sha256),
        ("check", "skipped" if args.no_check else
         f"max |onnx - torch| {report.max_abs_diff:.2g}, argmax agreement {report.argmax_agreement:.6f} on "
         f"{' x '.join(str(s) for s in report.check_shape)}")]
    rows += [(f"input {name}", rx) for name, rx in data["card"]["inputs"].items()]
    rows += [(f"label {value}", text) for value, text in data["card"]["labels"].items()]
    if args.int8:
        windows = calibration_windows_from_dir(args.calibration, card, max_windows=args.calibration_windows)
        out8 = Path(args.out).with_name(Path(args.out).stem + ".int8.onnx")
        q = quantize_int8(args.out, out8, windows, min_channels=args.int8_min_channels,
                          nodes_to_exclude=args.int8_exclude)
        comparison = int8_report(args.out, out8, windows[:4])
        data["int8"] = {**q.to_dict(), "comparison": comparison}
        rows += [("int8 model", out8), ("int8 voxel agreement", comparison.get("voxel_agreement")),
                 ("int8 speed-up", comparison.get("speedup"))]
    emit(args, data, fields(rows))
    return 0
