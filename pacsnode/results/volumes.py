"""Segment volumes in millilitres from a label map and its voxel geometry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pacsnode.errors import ResultsError
from pacsnode.results.card import result_card

__all__ = ["voxel_volume_ml", "segment_volumes_ml"]


def voxel_volume_ml(
    affine: np.ndarray | None = None, spacing: Sequence[float] | None = None
) -> float:
    """Volume of one voxel in mL: |det(affine[:3, :3])| / 1000, or the product of (z, y, x) spacing."""
    if (affine is None) == (spacing is None):
        raise ResultsError("voxel volume needs exactly one of affine (4x4) or spacing (z, y, x), got "
                           f"{'both' if affine is not None else 'neither'}")
    if affine is not None:
        a = np.asarray(affine, dtype=np.float64)
        if a.shape not in ((4, 4), (3, 3)):
            raise ResultsError(f"affine must be a 4x4 matrix, got shape {a.shape}")
        mm3 = abs(float(np.linalg.det(a[:3, :3])))
    else:
        s = [float(v) for v in spacing]  # type: ignore[union-attr]
        if len(s) != 3:
            raise ResultsError(f"spacing must be three numbers (z, y, x) in mm, got {spacing!r}")
        mm3 = abs(s[0] * s[1] * s[2])
    if not np.isfinite(mm3) or mm3 <= 0:
        raise ResultsError(f"voxel volume must be a positive number of mm3, got {mm3}")
    return mm3 / 1000.0


def segment_volumes_ml(
    labels: np.ndarray,
    card: Any,
    *,
    affine: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
) -> dict[int, float]:
    """Label value → volume in mL (voxel count × voxel volume), for every card label (0.0 if absent);
    a region's volume is its union's."""
    rc = result_card(card)
    unit = voxel_volume_ml(affine, spacing)
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64), minlength=256)
    return {lb.value: float(sum(counts[v] for v in lb.members)) * unit for lb in rc.labels}
