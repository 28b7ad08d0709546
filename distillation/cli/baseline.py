"""`distill baseline DATASET`: the no-network voxel classifier's Dice, the floor beside every study table.

Fits :mod:`distillation.evaluate.baseline` (gradient boosting on z-scored intensities, smoothed
copies and gradient magnitude per channel, subsampled voxels, seeded) on DATASET's imagesTr/labelsTr
and scores it on imagesTs/labelsTs: Dice per label, the mean over labels and, for BraTS-labelled
brain data, the WT/TC/ET regions and their mean. Writes a JSON results file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

__all__ = ["register", "run"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("baseline", help="fit the no-network voxel classifier and report its held-out Dice",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", type=Path, help="nnU-Net raw dataset folder (dataset.json, imagesTr, imagesTs, ...)")
    p.add_argument("--out", type=Path, required=True, help="results JSON file to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the voxel sampling and the classifier")
    p.add_argument("--per-label", type=int, default=4000, help="voxels drawn per label per training case")
    p.add_argument("--background", type=int, default=12000, help="further random voxels per training case")
    p.add_argument("--max-iter", type=int, default=50, help="boosting iterations")
    p.add_argument("--learning-rate", type=float, default=0.2, help="boosting learning rate")
    p.add_argument("--max-train-cases", type=int, default=0, help="use only the first N training cases (0 = all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from distillation.evaluate.baseline import BaselineParams
    from distillation.evaluate.baseline_dataset import evaluate_dataset

    root = Path(args.dataset)
    if not 0 < args.learning_rate <= 1:
        raise ValueError(f"--learning-rate must be in (0, 1], got {args.learning_rate}")
    for name in ("per_label", "background", "max_iter"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    params = BaselineParams(seed=args.seed, per_label=args.per_label, background=args.background,
                            max_iter=args.max_iter, learning_rate=args.learning_rate)
    result = evaluate_dataset(root, params, max_train_cases=args.max_train_cases)
    per_label, per_region = result["dice_per_label"], result["dice_per_region"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    width = max(len(n) for n in [*per_label, *per_region, "mean over labels"])
    print(f"{'structure':<{width}}  Dice (mean of {result['test_cases']} held-out cases)")
    for name, value in [*per_label.items(), ("mean over labels", result["mean_dice_labels"]),
                        *per_region.items()]:
        print(f"{name:<{width}}  {value:.3f}")
    if per_region:
        print(f"{'mean WT/TC/ET':<{width}}  {result['mean_dice_regions']:.3f}")
    print(f"wrote {out}")
    return 0

