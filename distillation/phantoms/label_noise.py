"""Boundary label noise as an annotator makes it: contours drawn a voxel too wide here, too tight there.

Only voxels on a boundary of the reference (a 6-neighbour with another label) can change, and each
takes the label of one of those neighbours. Where a smooth seeded field is high, the higher label
of a boundary grows into the lower one; where it is low, the lower label (often background) grows
into the higher one. The field is smooth, so the error is coherent along a contour, as a hand's is.
"""

from __future__ import annotations

import numpy as np

from .fields import smooth_field

__all__ = ["jitter_boundaries", "boundary_mask"]

_SHIFTS = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))


def _neighbour(labels: np.ndarray, shift: tuple[int, int, int]) -> np.ndarray:
    """The label of each voxel's neighbour at ``shift`` (the voxel's own label at the volume's edge)."""
    out = labels.copy()
    src = tuple(slice(max(s, 0), n + min(s, 0)) for s, n in zip(shift, labels.shape, strict=True))
    dst = tuple(slice(max(-s, 0), n + min(-s, 0)) for s, n in zip(shift, labels.shape, strict=True))
    out[dst] = labels[src]
    return out


def _neighbour_extremes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(highest, lowest) label among each voxel's 6-neighbours and itself."""
    hi, lo = labels.copy(), labels.copy()
    for shift in _SHIFTS:
        n = _neighbour(labels, shift)
        np.maximum(hi, n, out=hi)
        np.minimum(lo, n, out=lo)
    return hi, lo


def boundary_mask(labels: np.ndarray) -> np.ndarray:
    """Voxels with a 6-neighbour of another label."""
    hi, lo = _neighbour_extremes(labels)
    return hi != lo


def jitter_boundaries(labels: np.ndarray, rng: np.random.Generator, *, fraction: float = 0.5,
                      coarse: tuple[int, int, int] = (6, 7, 6)) -> np.ndarray:
    """A copy of ``labels`` with about ``fraction`` of its boundary voxels moved one voxel, coherently.

    ``coarse`` control points per axis set how long a stretch of contour errs the same way.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label noise fraction must be in 0..1, got {fraction!r}")
    labels = np.asarray(labels)
    field = smooth_field(rng, labels.shape, coarse)
    # the field is ~N(0, 1) at every voxel: |field| > t for a share `fraction` of voxels
    threshold = float(np.quantile(np.abs(field), 1.0 - fraction)) if fraction > 0 else np.inf
    hi, lo = _neighbour_extremes(labels)
    out = labels.copy()
    grow = (hi != labels) & (field > threshold)
    shrink = (lo != labels) & (field < -threshold)
    out[grow] = hi[grow]
    out[shrink] = lo[shrink]
    return out
