"""``distill import-nnunet FOLDER --fold 0 --configuration 3d_fullres --out model.onnx``."""

from __future__ import annotations

import argparse
from typing import Any

from distillation.cli.card_options import add_card_options, apply_card_options
from distillation.cli.output import add_json_option, emit, fields

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import-nnunet", help="import an nnU-Net v2 trained model folder as an ONNX model (and a teacher)",
        description="Rebuild an nnU-Net v2 model (plans.json, dataset.json, fold_N/checkpoint_final.pth), load "
                    "its weights strictly and write a deployable ONNX with its model card.")
    p.add_argument("folder", help="nnU-Net results folder (Trainer__Plans__Configuration)")
    p.add_argument("--fold", default="0", help="fold number or 'all' (default 0)")
    p.add_argument("--configuration", default="3d_fullres", help="plans configuration (default 3d_fullres)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in the fold")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--teacher-out", help="also save a distillation teacher checkpoint here")
    p.add_argument("--name", help="model card name (default: the plans' dataset name)")
    p.add_argument("--version", default="1.0.0", help="model card version (default 1.0.0)")
    p.add_argument("--mirror", action="store_true",
                   help="test-time mirroring on the axes the trainer allows (nnU-Net's default; 8x slower)")
    p.add_argument("--tile-step", type=float, default=0.5, help="sliding-window step (default 0.5)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs torch check")
    add_card_options(p)
    add_json_option(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from distillation.nnunet import import_nnunet

    fold: int | str = int(args.fold) if str(args.fold).isdigit() else str(args.fold)
    imported = import_nnunet(args.folder, fold=fold, configuration=args.configuration,
                             checkpoint_name=args.checkpoint, name=args.name, version=args.version,
                             tile_step=args.tile_step)
    from dataclasses import replace

    from distillation.export import validate_card

    card = apply_card_options(imported.card, args)
    if args.mirror and imported.inference_mirror_axes:
        card["mirror_axes"] = list(imported.inference_mirror_axes)
    imported = replace(imported, card=validate_card(card))
    report = imported.export(args.out, opset=args.opset, check=not args.no_check)
    card = imported.card
    summary: dict[str, Any] = {"onnx": report.to_dict(), "card": {
        "name": card["name"], "labels": [lab["name"] for lab in card["labels"]],
        "inputs": {c["name"]: c["series_description"] for c in card["inputs"]},
        "target_spacing": card["target_spacing"], "patch_size": card["patch_size"]}}
    if args.teacher_out:
        summary["teacher"] = str(imported.save_teacher(args.teacher_out))
    rows: list[tuple[str, Any]] = [
        ("model", report.path), ("name", f"{card['name']} {card['version']}"), ("parameters", report.parameters),
        ("sha256", report.sha256), ("labels", ", ".join(summary["card"]["labels"])),
        ("target spacing (mm)", card["target_spacing"]), ("patch size", card["patch_size"])]
    rows += [(f"input {name}", rx) for name, rx in summary["card"]["inputs"].items()]
    if args.teacher_out:
        rows.append(("teacher checkpoint", summary["teacher"]))
    emit(args, summary, fields(rows))
    return 0
