"""Lesion-wise detection: how many lesions a model finds, misses and invents, small ones apart.

A Dice mean hides a missed small lesion (a few voxels of a large whole-tumour volume), which is what
matters when a radiologist reads the output. The rule, stated once here and in docs/study.md:

* **Lesions** are the connected components (26-connectivity: voxels sharing a face, an edge or a
  corner) of the lesion mask of the reference: the whole-tumour region (labels 1-3) for a BraTS-
  labelled model, else the labels named "lesion", "tumor" / "tumour" or "mass" (the CT phantom's
  liver lesion). Fragments closer than ``merge_voxels`` + 2 voxels (a gap of at most 2 voxels at the
  default 1) are one lesion: components are taken on the mask dilated by ``merge_voxels`` voxels and
  each lesion keeps only its own voxels, as the BraTS 2023 lesion-wise metrics merge nearby ground-
  truth components. Without it an annotator's boundary noise splits a lesion: on the hard brain
  phantoms (seed 3: three lesions, four components; seed 13: one lesion, a stray voxel beside it)
  every such fragment would be a "small lesion" no model could be expected to find. The price:
  two lesions within that gap count as one (hard seed 22: three lesions, two after merging).
  Predicted components are taken the same way on the prediction.
* A reference lesion is **detected** (a true positive) when at least one voxel of it is predicted as
  lesion, i.e. some predicted component overlaps it; otherwise it is a false negative. One predicted
  component touching two lesions detects both.
* A predicted component that overlaps no reference lesion is a **false positive**.
* **Small** means a volume below ``small_ml`` (default :data:`SMALL_LESION_ML`, 1 ml: a sphere of
  6.2 mm radius, 125 voxels at 2 mm). Small-lesion counts take the small reference lesions (TP,
  FN) and the false-positive components that are small themselves (FP): a spurious speck is a small
  false detection, a spurious large blob is counted among all lesions only.
* **F1** = 2 TP / (2 TP + FP + FN), pooled: counts are summed over cases (and seeds) before the
  ratio, since a single case has no small lesion as often as not. No lesion and no false positive
  anywhere leaves F1 undefined (``None``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SMALL_LESION_ML", "LesionCounts", "LesionDetection", "lesion_detection", "pooled_f1",
           "lesion_values", "lesion_summary"]

SMALL_LESION_ML = 1.0
_LESION_NAMES = ("lesion", "tumor", "tumour", "mass")


@dataclass(frozen=True)
class LesionCounts:
    """True positives, false positives and false negatives of lesion detection."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: LesionCounts) -> LesionCounts:
        return LesionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def f1(self) -> float | None:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else None

    def to_dict(self) -> dict[str, int]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LesionCounts:
        return cls(int(d["tp"]), int(d["fp"]), int(d["fn"]))


@dataclass(frozen=True)
class LesionDetection:
    """One case: counts over all lesions and over small ones, and the reference's lesion volumes (ml)."""

    all: LesionCounts
    small: LesionCounts
    reference_ml: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"all": self.all.to_dict(), "small": self.small.to_dict(),
                "reference_ml": [round(v, 4) for v in self.reference_ml]}


def _components(mask: np.ndarray, merge_voxels: int) -> tuple[np.ndarray, int]:
    """26-connected components of ``mask`` dilated by ``merge_voxels``, each holding only ``mask``'s voxels."""
    from scipy import ndimage

    cube = np.ones((3, 3, 3), dtype=bool)
    grown = ndimage.binary_dilation(mask, cube, iterations=merge_voxels) if merge_voxels and mask.any() else mask
    labels, n = ndimage.label(grown, structure=cube)
    labels[~mask] = 0
    return labels, n


def lesion_detection(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                     small_ml: float = SMALL_LESION_ML, merge_voxels: int = 1) -> LesionDetection:
    """Detection counts of binary lesion masks ``pred`` and ``ref`` on one grid of ``spacing`` (mm)."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference must share one grid, got shapes {pred.shape} and {ref.shape}")
    if not small_ml > 0 or merge_voxels < 0:
        raise ValueError(f"small_ml must be a positive volume in ml and merge_voxels zero or more, got "
                         f"{small_ml!r} and {merge_voxels!r}")
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    ref_lab, n_ref = _components(ref, merge_voxels)
    pred_lab, n_pred = _components(pred, merge_voxels)
    ref_ml = np.bincount(ref_lab.ravel(), minlength=n_ref + 1)[1:] * voxel_ml
    pred_ml = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)[1:] * voxel_ml
    overlap = pred & ref
    detected = np.zeros(n_ref + 1, dtype=bool)
    detected[np.unique(ref_lab[overlap])] = True
    matched = np.zeros(n_pred + 1, dtype=bool)
    matched[np.unique(pred_lab[overlap])] = True
    detected, matched = detected[1:], matched[1:]
    small_ref, small_pred = ref_ml < small_ml, pred_ml < small_ml
    return LesionDetection(
        all=LesionCounts(int(detected.sum()), int((~matched).sum()), int((~detected).sum())),
        small=LesionCounts(int((detected & small_ref).sum()), int((~matched & small_pred).sum()),
                           int((~detected & small_ref).sum())),
        reference_ml=tuple(float(v) for v in ref_ml))


def pooled_f1(counts: Iterable[LesionCounts | Mapping[str, Any]]) -> float | None:
    """F1 of the counts summed over cases (dicts as :meth:`LesionCounts.to_dict` writes them accepted)."""
    total = LesionCounts()
    for c in counts:
        total = total + (c if isinstance(c, LesionCounts) else LesionCounts.from_dict(c))
    return total.f1


def lesion_values(labels: Mapping[str, int], regions: Mapping[str, Sequence[int]] | None = None) -> tuple[int, ...]:
    """The label values that make up a lesion: the ``whole_tumor`` region if there is one, else the labels
    whose name says lesion, tumor / tumour or mass; ``()`` when the model segments no lesion."""
    if regions and "whole_tumor" in regions:
        return tuple(int(v) for v in regions["whole_tumor"])
    return tuple(int(v) for name, v in labels.items() if any(w in name.lower() for w in _LESION_NAMES))


def lesion_summary(cases: Mapping[str, LesionDetection], values: Sequence[int],
                   small_ml: float = SMALL_LESION_ML, merge_voxels: int = 1) -> dict[str, Any]:
    """The evaluation's ``lesions`` section: the rule's settings, per-case counts and pooled F1."""
    total_all = sum((d.all for d in cases.values()), LesionCounts())
    total_small = sum((d.small for d in cases.values()), LesionCounts())
    return {"settings": {"lesion_labels": [int(v) for v in values], "small_ml": small_ml, "connectivity": 26,
                         "merge_voxels": merge_voxels,
                         "detected": "a reference lesion overlapped by at least one predicted voxel",
                         "false_positive": "a predicted component overlapping no reference lesion",
                         "f1": "2TP / (2TP + FP + FN) over counts summed over cases"},
            "summary": {"all": {**total_all.to_dict(), "f1": total_all.f1},
                        "small": {**total_small.to_dict(), "f1": total_small.f1}},
            "cases": {ident: d.to_dict() for ident, d in sorted(cases.items())}}
