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
import platform
from pathlib import Path

import numpy as np
from tqdm import tqdm

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


def _load(case) -> tuple[np.ndarray, np.ndarray]:
    images, _ = case.load_images()
    return images, case.load_label()


def run(args: argparse.Namespace) -> int:
    from distillation.evaluate.baseline import (
        BaselineParams,
        dice_scores,
        feature_names,
        fit,
        predict,
    )
    from distillation.evaluate.dataset import iter_cases
    from distillation.evaluate.metrics import BRATS_REGIONS

    root = Path(args.dataset)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"a dataset folder must hold dataset.json, got none in {root}")
    if not 0 < args.learning_rate <= 1:
        raise ValueError(f"--learning-rate must be in (0, 1], got {args.learning_rate}")
    for name in ("per_label", "background", "max_iter"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    meta = json.loads(meta_path.read_text())
    labels = {str(k): int(v) for k, v in meta["labels"].items()}
    channels = [str(v) for _, v in sorted(meta["channel_names"].items(), key=lambda kv: int(kv[0]))]
    modality = "CT" if channels and all(c == "CT" for c in channels) else "MR"
    regions = dict(BRATS_REGIONS) if {"edema", "necrotic_core", "enhancing_tumor"} <= set(labels) else {}
    train = list(iter_cases(root, "Tr"))
    if args.max_train_cases:
        train = train[: args.max_train_cases]
    test = list(iter_cases(root, "Ts"))
    if not train or not test:
        raise ValueError(f"a baseline needs training and held-out cases, got {len(train)} and {len(test)} in {root}")
    params = BaselineParams(seed=args.seed, per_label=args.per_label, background=args.background,
                            max_iter=args.max_iter, learning_rate=args.learning_rate)
    clf, seconds, n_voxels = fit((_load(c) for c in tqdm(train, desc="baseline: features", unit="case")),
                                 modality, params)
    per_case = []
    for case in tqdm(test, desc="baseline: held-out", unit="case"):
        images, ref = _load(case)
        scores = dice_scores(predict(clf, images, modality), ref, labels, regions)
        per_case.append({"case": case.identifier, "dice": {k: round(v, 5) for k, v in scores.items()}})
    names = [n for n, v in labels.items() if v != 0]
    per_label = {n: float(np.mean([c["dice"][n] for c in per_case])) for n in names}
    per_region = {n: float(np.mean([c["dice"][n] for c in per_case])) for n in regions}
    result = {
        "what": "no-network voxel baseline (HistGradientBoostingClassifier), held-out Dice",
        "dataset": str(root), "dataset_name": meta.get("name", root.name),
        "train_cases": len(train), "test_cases": len(test), "modality": modality,
        "features": feature_names(channels), "params": params.to_dict(),
        "train_voxels": n_voxels, "fit_seconds": round(seconds, 2),
        "dice_per_label": per_label, "mean_dice_labels": float(np.mean(list(per_label.values()))),
        "dice_per_region": per_region,
        "mean_dice_regions": float(np.mean(list(per_region.values()))) if per_region else None,
        "per_case": per_case,
        "versions": {"python": platform.python_version(), "sklearn": _sklearn_version()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    width = max(len(n) for n in [*names, *regions, "mean over labels"])
    print(f"{'structure':<{width}}  Dice (mean of {len(test)} held-out cases)")
    for name, value in [*per_label.items(), ("mean over labels", result["mean_dice_labels"]),
                        *per_region.items()]:
        print(f"{name:<{width}}  {value:.3f}")
    if per_region:
        print(f"{'mean WT/TC/ET':<{width}}  {result['mean_dice_regions']:.3f}")
    print(f"wrote {out}")
    return 0


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)
