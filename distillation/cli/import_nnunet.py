"""``distill import-nnunet FOLDER --out model.onnx``: every fold, mirroring and postprocessing as nnU-Net."""

from __future__ import annotations

import argparse
from typing import Any

from distillation.cli.card_options import add_card_options, apply_card_options
from distillation.cli.output import add_json_option, emit, fields

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import-nnunet", help="import an nnU-Net v2 trained model folder as an ONNX model (and a teacher)",
        description="Rebuild an nnU-Net v2 model (plans.json, dataset.json, fold_N/checkpoint_final.pth) as "
                    "nnUNetv2_predict runs it: configuration and trainer from the checkpoints, every fold "
                    "(logits averaged in one ONNX graph), test-time mirroring on the checkpoint's axes, the "
                    "postprocessing nnUNetv2_find_best_configuration chose; weights loaded strictly.")
    p.add_argument("folder", help="nnU-Net results folder (Trainer__Plans__Configuration)")
    p.add_argument("--fold", action="append", default=None, metavar="N",
                   help="a fold to use (repeat for several; 'all' for fold_all); default: every fold_N "
                        "holding the checkpoint, as nnU-Net")
    p.add_argument("--configuration", help="must equal the checkpoints' init_args.configuration (checked only)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth",
                   choices=["checkpoint_final.pth", "checkpoint_best.pth"], help="checkpoint file in each fold")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--teacher-out", help="also save a distillation teacher checkpoint here (one fold only)")
    p.add_argument("--name", help="model card name (default: the plans' dataset name)")
    p.add_argument("--version", default="1.0.0", help="model card version (default 1.0.0)")
    p.add_argument("--no-mirror", action="store_true",
                   help="no test-time mirroring (nnU-Net mirrors on the checkpoint's axes: 2**axes runs per window)")
    pp = p.add_mutually_exclusive_group()
    pp.add_argument("--postprocessing", metavar="FILE",
                    help="nnU-Net's postprocessing.pkl or .json (default: the folder's, if it has one)")
    pp.add_argument("--no-postprocessing", action="store_true", help="no postprocessing, as nnUNetv2_predict alone")
    p.add_argument("--tile-step", type=float, default=0.5, help="sliding-window step (default 0.5)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs torch check")
    add_card_options(p)
    add_json_option(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from distillation.nnunet import import_nnunet

    postprocessing: Any = False if args.no_postprocessing else (args.postprocessing or True)
    imported = import_nnunet(args.folder, folds=args.fold, configuration=args.configuration,
                             checkpoint_name=args.checkpoint, name=args.name, version=args.version,
                             tile_step=args.tile_step, mirror=not args.no_mirror, postprocessing=postprocessing)
    from dataclasses import replace

    from distillation.export import validate_card

    imported = replace(imported, card=validate_card(apply_card_options(imported.card, args)))
    report = imported.export(args.out, opset=args.opset, check=not args.no_check)
    card = imported.card
    summary: dict[str, Any] = {"onnx": report.to_dict(), "folds": list(imported.folds), "card": {
        "name": card["name"], "labels": [lab["name"] for lab in card["labels"]],
        "inputs": {c["name"]: c["series_description"] for c in card["inputs"]},
        "target_spacing": card["target_spacing"], "patch_size": card["patch_size"]}}
    if args.teacher_out:
        summary["teacher"] = str(imported.save_teacher(args.teacher_out))
    rows: list[tuple[str, Any]] = [
        ("model", report.path), ("name", f"{card['name']} {card['version']}"), ("parameters", report.parameters),
        ("sha256", report.sha256), ("labels", ", ".join(summary["card"]["labels"])),
        ("target spacing (mm)", card["target_spacing"]), ("patch size", card["patch_size"]),
        ("folds", ", ".join(imported.folds) + f" ({imported.checkpoint_name})"),
        ("mirroring", f"axes {card['mirror_axes']}: {2 ** len(card['mirror_axes'])} network runs per window"
         if card["mirror_axes"] else "off"),
        ("postprocessing", f"{card['postprocessing']['largest_component']} from {imported.postprocessing_file}"
         if imported.postprocessing_file else (card["postprocessing"]["largest_component"] or "none"))]
    if imported.previous is not None:  # the cascade's first stage, written beside the model
        first = report.path.with_name(f"{report.path.stem}.stage1.onnx")
        summary["previous_stage"] = {"onnx": str(first), "configuration": imported.previous.config.configuration,
                                     "folds": list(imported.previous.folds), "labels": list(imported.previous_labels)}
        rows.append(("previous stage", f"{first} ({imported.previous.config.configuration}, folds "
                     f"{', '.join(imported.previous.folds)}; labels {list(imported.previous_labels)} one-hot)"))
    rows += [(f"input {name}", rx) for name, rx in summary["card"]["inputs"].items()]
    if args.teacher_out:
        rows.append(("teacher checkpoint", summary["teacher"]))
    emit(args, summary, fields(rows))
    return 0
