"""Segmentation metrics per label and per region through MONAI.

Dice (``monai.metrics.compute_dice``), HD95 (``compute_hausdorff_distance(percentile=95)``) and NSD
(``compute_surface_dice`` at a tolerance in mm), all with the voxel spacing, on binary masks.

Empty-mask convention (BraTS-style, stated once here and in docs/nnunet-parity.md):

* reference and prediction both empty → Dice 1, HD95 0 mm, NSD 1 (a correct "nothing here");
* exactly one empty → Dice 0, NSD 0, HD95 = +inf (written as the string ``"inf"`` in JSON);
  aggregates average HD95 over finite cases only and report how many were infinite (``n_inf``).

MONAI itself returns NaN or inf with a warning in those cases, so they never reach it.

MONAI 1.5-1.6's HD95 and NSD pass a deprecated argument to their own ``get_mask_edges`` and warn
(FutureWarning) on every call a caller cannot avoid (Project-MONAI/MONAI#9059); that one warning is
silenced around the calls, nothing else.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BRATS_REGIONS", "StructureMetrics", "dice", "structure_metrics", "case_metrics", "aggregate",
           "brats_regions_for"]

# TEAM.md: whole tumor = {1,2,3}, tumor core = {2,3}, enhancing = {3}.
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing": (3,)}
_BRAIN_TYPES = {"79654002", "6574001", "108369006"}
# MONAI's own call to get_mask_edges with its deprecated argument (Project-MONAI/MONAI#9059)
_MONAI_9059 = r".*get_mask_edges:always_return_as_numpy"


@dataclass(frozen=True)
class StructureMetrics:
    dice: float
    hd95: float
    nsd: float
    reference_voxels: int
    predicted_voxels: int

    def to_dict(self) -> dict[str, Any]:
        return {"dice": self.dice, "hd95": "inf" if math.isinf(self.hd95) else self.hd95, "nsd": self.nsd,
                "reference_voxels": self.reference_voxels, "predicted_voxels": self.predicted_voxels}


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two binary masks (MONAI's ``compute_dice``), with the empty-mask convention above."""
    import torch

    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if not pred.any() or not ref.any():
        return 1.0 if not pred.any() and not ref.any() else 0.0
    return _monai_dice(*(torch.from_numpy(m)[None, None].float() for m in (pred, ref)))


def _monai_dice(p: Any, r: Any) -> float:
    """MONAI's Dice of two non-empty (1, 1, *spatial) float mask tensors."""
    from monai.metrics import compute_dice

    return float(compute_dice(p, r, include_background=True)[0, 0])


def structure_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                      nsd_tolerance_mm: float = 1.0) -> StructureMetrics:
    """Dice, HD95 (mm) and NSD of two binary masks on one grid with ``spacing`` (z, y, x) mm."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference must share one grid, got shapes {pred.shape} and {ref.shape}")
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    if n_pred == 0 and n_ref == 0:
        return StructureMetrics(1.0, 0.0, 1.0, 0, 0)
    if n_pred == 0 or n_ref == 0:
        return StructureMetrics(0.0, math.inf, 0.0, n_ref, n_pred)
    p = torch.from_numpy(pred)[None, None].float()
    r = torch.from_numpy(ref)[None, None].float()
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_MONAI_9059, category=FutureWarning)
        hd95 = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=sp)[0, 0])
        nsd = float(compute_surface_dice(p, r, class_thresholds=[float(nsd_tolerance_mm)],
                                         include_background=True, spacing=sp)[0, 0])
    return StructureMetrics(_monai_dice(p, r), hd95, nsd, n_ref, n_pred)


def brats_regions_for(labels: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, ...]]:
    """BraTS regions when a card's labels are the TEAM.md brain labels (by SNOMED type code), else {}."""
    labels = list(labels)
    types = {str(lab["type"]["value"]) for lab in labels}
    values = {int(lab["value"]) for lab in labels}
    if _BRAIN_TYPES <= types and {1, 2, 3} <= values:
        return dict(BRATS_REGIONS)
    return {}


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], labels: Mapping[str, int],
                 regions: Mapping[str, Sequence[int]] | None = None, nsd_tolerance_mm: float = 1.0
                 ) -> dict[str, StructureMetrics]:
    """Metrics for each label (name → value) and each region (name → values) of one case."""
    out = {name: structure_metrics(pred == v, ref == v, spacing, nsd_tolerance_mm) for name, v in labels.items()}
    for name, values in (regions or {}).items():
        out[name] = structure_metrics(np.isin(pred, values), np.isin(ref, values), spacing, nsd_tolerance_mm)
    return out


def aggregate(per_case: Sequence[Mapping[str, StructureMetrics]]) -> dict[str, dict[str, Any]]:
    """Mean / median / std of each metric per structure; HD95 over finite cases, ``n_inf`` counted."""
    names: list[str] = []
    for case in per_case:
        names.extend(n for n in case if n not in names)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        rows = [c[name] for c in per_case if name in c]
        entry: dict[str, Any] = {"n": len(rows)}
        for metric in ("dice", "nsd", "hd95"):
            vals = np.array([getattr(r, metric) for r in rows], dtype=float)
            finite = vals[np.isfinite(vals)]
            entry[metric] = {
                "mean": float(finite.mean()) if finite.size else None,
                "median": float(np.median(finite)) if finite.size else None,
                "std": float(finite.std()) if finite.size else None,
            }
            if metric == "hd95":
                entry[metric]["n_inf"] = int((~np.isfinite(vals)).sum())
        out[name] = entry
    return out
