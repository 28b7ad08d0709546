"""The voxel baseline on a whole nnU-Net raw dataset: fit on imagesTr, score imagesTs.

One function, :func:`evaluate_dataset`, used by ``distill baseline`` and by ``distill study``
(which puts its result beside every study table, as the floor a network must clear).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from distillation.evaluate.baseline import BaselineParams, dice_scores, feature_names, fit, predict

__all__ = ["evaluate_dataset"]


def _load(case) -> tuple[np.ndarray, np.ndarray]:
    images, _ = case.load_images()
    return images, case.load_label()


def evaluate_dataset(root: str | Path, params: BaselineParams | None = None, *,
                     max_train_cases: int = 0, train_ids: set[str] | None = None) -> dict[str, Any]:
    """Fit the baseline on ``root``'s training cases (all, the first ``max_train_cases``, or those
    in ``train_ids``) and score every held-out case: Dice per label, per BraTS region and their means.

    Raises ``FileNotFoundError`` / ``ValueError`` with one line naming the problem."""
    from distillation.evaluate.dataset import iter_cases
    from distillation.evaluate.metrics import BRATS_REGIONS

    params = params or BaselineParams()
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"a dataset folder must hold dataset.json, got none in {root}")
    meta = json.loads(meta_path.read_text())
    labels = {str(k): int(v) for k, v in meta["labels"].items()}
    channels = [str(v) for _, v in sorted(meta["channel_names"].items(), key=lambda kv: int(kv[0]))]
    modality = "CT" if channels and all(c == "CT" for c in channels) else "MR"
    regions = dict(BRATS_REGIONS) if {"edema", "necrotic_core", "enhancing_tumor"} <= set(labels) else {}
    train = list(iter_cases(root, "Tr"))
    if train_ids is not None:
        train = [c for c in train if c.identifier in train_ids]
    if max_train_cases:
        train = train[:max_train_cases]
    test = list(iter_cases(root, "Ts"))
    if not train or not test:
        raise ValueError(f"a baseline needs training and held-out cases, got {len(train)} and {len(test)} in {root}")
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
    return {
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


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)
