"""The no-network floor of a benchmark: a per-voxel gradient-boosting classifier.

Features per channel: the intensity z-scored over the case's foreground (non-zero voxels for MR,
the body above -500 HU for CT), its Gaussian-smoothed copies at ``SIGMAS`` voxels and its gradient
magnitude at 1 voxel. A scikit-learn ``HistGradientBoostingClassifier`` is fitted on voxels drawn
per training case (each label up to ``per_label`` voxels, plus ``background`` random ones), seeded,
and predicts every foreground voxel of a held-out case. Rare labels are oversampled and not weighted
back, which favours Dice over accuracy: weighted back to the true label frequencies, the floor on
the default brain setting fell to 0.24 mean WT/TC/ET (docs/benchmark.md), too low to stand for
"what no network can do". If a network does not clear this floor by a wide margin, the benchmark
cannot show what a network (or distillation) adds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

__all__ = ["SIGMAS", "BaselineParams", "features", "foreground", "sample_voxels", "fit", "predict",
           "dice_scores"]

SIGMAS = (1.0, 2.0, 4.0)


@dataclass(frozen=True)
class BaselineParams:
    seed: int = 0
    per_label: int = 4000
    background: int = 12000
    max_iter: int = 50
    learning_rate: float = 0.2
    max_leaf_nodes: int = 31

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def foreground(images: np.ndarray, modality: str) -> np.ndarray:
    """Voxels the classifier sees: any non-zero channel (skull-stripped MR), or the body (CT > -500 HU)."""
    if modality == "CT":
        return images[0] > -500
    return np.any(images != 0, axis=0)


def feature_names(channels: Sequence[str]) -> list[str]:
    kinds = ["z", *(f"smooth{s:g}" for s in SIGMAS), "gradient1"]
    return [f"{c}:{k}" for c in channels for k in kinds]


def features(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[voxels in mask, channels × (2 + len(SIGMAS))] float32 features."""
    columns = []
    for channel in images:
        values = channel[mask]
        mean, sd = float(values.mean()) if values.size else 0.0, float(values.std()) if values.size else 1.0
        z = ((channel - mean) / (sd or 1.0)).astype(np.float32) * mask
        columns.append(z[mask])
        for sigma in SIGMAS:
            columns.append(ndimage.gaussian_filter(z, sigma)[mask])
        columns.append(ndimage.gaussian_gradient_magnitude(z, 1.0)[mask])
    return np.stack(columns, axis=1).astype(np.float32)


def sample_voxels(labels: np.ndarray, rng: np.random.Generator, per_label: int, background: int) -> np.ndarray:
    """Indices into ``labels`` (flattened over the mask): up to ``per_label`` of each label, + random ones."""
    chosen = []
    for value in np.unique(labels):
        where = np.flatnonzero(labels == value)
        chosen.append(rng.choice(where, size=min(per_label, where.size), replace=False))
    chosen.append(rng.choice(labels.size, size=min(background, labels.size), replace=False))
    return np.unique(np.concatenate(chosen))


def fit(cases: Iterable[tuple[np.ndarray, np.ndarray]], modality: str, params: BaselineParams):
    """Fit on (images [C, k, i, j], labels [k, i, j]) pairs; returns (classifier, seconds, voxels used)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(params.seed)
    xs, ys = [], []
    for images, labels in cases:
        mask = foreground(images, modality)
        y = labels[mask]
        idx = sample_voxels(y, rng, params.per_label, params.background)
        xs.append(features(images, mask)[idx])
        ys.append(y[idx])
    x, y = np.concatenate(xs), np.concatenate(ys)
    clf = HistGradientBoostingClassifier(max_iter=params.max_iter, learning_rate=params.learning_rate,
                                         max_leaf_nodes=params.max_leaf_nodes, early_stopping=False,
                                         random_state=params.seed)
    start = time.perf_counter()
    clf.fit(x, y)
    return clf, time.perf_counter() - start, int(len(y))


def predict(clf, images: np.ndarray, modality: str) -> np.ndarray:
    """uint8 label map of one case (background outside the foreground)."""
    mask = foreground(images, modality)
    out = np.zeros(mask.shape, dtype=np.uint8)
    if mask.any():
        out[mask] = clf.predict(features(images, mask)).astype(np.uint8)
    return out


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice with the evaluator's empty convention (both empty → 1, one empty → 0)."""
    p, r = int(pred.sum()), int(ref.sum())
    if p == 0 or r == 0:
        return 1.0 if p == r else 0.0
    return 2.0 * float(np.logical_and(pred, ref).sum()) / (p + r)


def dice_scores(pred: np.ndarray, ref: np.ndarray, labels: Mapping[str, int],
                regions: Mapping[str, Sequence[int]] = {}) -> dict[str, float]:
    """Dice per foreground label name, then per region (a union of label values)."""
    scores = {name: _dice(pred == v, ref == v) for name, v in labels.items() if v != 0}
    for name, values in regions.items():
        scores[name] = _dice(np.isin(pred, values), np.isin(ref, values))
    return scores
