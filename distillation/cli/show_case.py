"""``distill show-case MODEL.onnx ... --dataset DIR --case ID --out case.png``: look at one case."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from distillation.cli.output import add_json_option, emit, table

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "show-case", help="picture of one case: image, reference and each model's prediction",
        description="Run each MODEL.onnx with pacsnode's inference (as `distill evaluate` does) on one case of an "
                    "nnU-Net raw dataset and draw the image, the reference and every prediction on the slice "
                    "where the reference is largest and through each model's largest false-positive component.")
    p.add_argument("models", nargs="+", type=Path,
                   help="exported .onnx files; a file named model.onnx is titled by its folder (a study run)")
    p.add_argument("--dataset", required=True, type=Path, help="nnU-Net raw dataset folder")
    p.add_argument("--case", required=True, help="case identifier, e.g. case_0220")
    p.add_argument("--split", default="Ts", choices=["Ts", "Tr"], help="images/labels split (default Ts)")
    p.add_argument("--channel", type=int, default=0, help="image channel drawn under the labels (default 0)")
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    add_json_option(p)
    p.set_defaults(func=_run)


def _title(model: Path) -> str:
    return model.parent.name if model.stem == "model" else model.stem


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from distillation.evaluate.case_figure import case_figure, slices_to_show
    from distillation.evaluate.dataset import read_nifti
    from distillation.evaluate.run import predict_cases
    from pacsnode.inference import Model

    missing = [str(m) for m in args.models if not m.is_file()]
    if missing:
        raise FileNotFoundError(f"every model must be an .onnx file, got {', '.join(missing)}")
    predictions = {}
    for path in args.models:
        model = Model.load(path, threads=args.threads)
        [(case, predictions[_title(path)], reference, _)] = predict_cases(
            model, args.dataset, args.split, identifiers=[args.case], progress=False)
    if not 0 <= args.channel < len(case.images):
        raise ValueError(f"--channel must be 0 to {len(case.images) - 1} for this dataset, got {args.channel}")
    image = read_nifti(case.images[args.channel])[0].astype(np.float32)  # the one channel drawn
    names = {int(lab["value"]): lab["name"] for lab in model.card.to_dict()["labels"]}  # as `distill evaluate` names them
    out = case_figure(image, reference, predictions, args.out,
                      title=f"{args.case} ({args.dataset.name}, images{args.split})", label_names=names)
    slices = [{"slice": k, "why": why} for k, why in slices_to_show(reference, predictions)]
    emit(args, {"out": str(out), "slices": slices},
         f"wrote {out}\n\n" + table(["slice", "why"], [(s["slice"], s["why"]) for s in slices]))
    return 0
