"""Put a volume into an acquisition orientation without losing its ground truth.

Axis-aligned targets (axial, sagittal, coronal) are exact permutations and flips of
the voxels; ``oblique`` resamples onto a grid rotated by a small fixed rotation
(linear for images, nearest neighbour for labels, so labels stay labels).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from .case import PhantomCase

__all__ = ["ORIENTATIONS", "reorient", "reorient_case", "flip_slice_order"]

ORIENTATIONS = ("axial", "sagittal", "coronal", "oblique")

# For each voxel axis (k, i, j): the LPS patient axis it runs along and its sign.
# Rows run along the row cosine (j), columns along the column cosine (i), and k
# along row_cosine x column_cosine (the DICOM slice normal).
_LAYOUT: dict[str, tuple[tuple[int, int], ...]] = {
    "axial": ((2, +1), (1, +1), (0, +1)),      # IOP 1\0\0\0\1\0, k toward head
    "sagittal": ((0, -1), (2, -1), (1, +1)),   # IOP 0\1\0\0\0\-1, k toward right
    "coronal": ((1, +1), (2, -1), (0, +1)),    # IOP 1\0\0\0\0\-1, k toward posterior
}

DEFAULT_OBLIQUE_DEGREES = (15.0, 10.0)


def _check(array: np.ndarray, affine: np.ndarray, orientation: str) -> np.ndarray:
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {', '.join(ORIENTATIONS)}, got {orientation!r}")
    if array.ndim != 3:
        raise ValueError(f"volume must be 3-D [k, i, j], got shape {array.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    return affine


def _axis_aligned(affine: np.ndarray, tol: float = 1e-3) -> bool:
    m = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.all(np.sort(np.abs(m), axis=0)[-1] > 1 - tol))


def _permute(array: np.ndarray, affine: np.ndarray,
             layout: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    """Exact permutation/flip of an axis-aligned volume into ``layout``."""
    m = affine[:3, :3]
    dominant = np.argmax(np.abs(m), axis=0)              # patient axis of each voxel axis
    sign = np.sign(m[dominant, np.arange(3)])
    order = []
    for patient_axis, want_sign in layout:
        src = int(np.nonzero(dominant == patient_axis)[0][0])
        order.append((src, int(sign[src]) * want_sign))
    out = np.transpose(array, [src for src, _ in order])
    new = np.eye(4)
    new[:3, 3] = affine[:3, 3]
    for dst, (src, s) in enumerate(order):
        col = affine[:3, src].copy()
        if s < 0:
            out = np.flip(out, axis=dst)
            new[:3, 3] += col * (array.shape[src] - 1)
            col = -col
        new[:3, dst] = col
    return np.ascontiguousarray(out), new


def _rotation(degrees: tuple[float, float]) -> np.ndarray:
    a, b = (math.radians(d) for d in degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    return rx @ ry


def flip_slice_order(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reverse k: the same voxels, numbered in the opposite slice direction."""
    n = array.shape[0]
    flip = np.eye(4)
    flip[0, 0] = -1
    flip[0, 3] = n - 1
    return np.ascontiguousarray(array[::-1]), np.asarray(affine, np.float64) @ flip


def reorient(array: np.ndarray, affine: np.ndarray, orientation: str, flip_slices: bool = False,
             *, order: int = 1, cval: float | None = None,
             oblique_degrees: tuple[float, float] = DEFAULT_OBLIQUE_DEGREES,
             ) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(array, affine)`` acquired in ``orientation``.

    ``flip_slices`` numbers the slices the other way (k runs against the slice
    normal, as in a head-to-feet acquisition). ``order`` is the interpolation order
    used only for ``oblique`` (0 for labels); ``cval`` fills voxels outside the
    source (default: the array's minimum).
    """
    affine = _check(array, affine, orientation)
    if orientation in _LAYOUT and _axis_aligned(affine):
        out, new = _permute(array, affine, _LAYOUT[orientation])
    else:
        if _axis_aligned(affine):
            src, src_aff = _permute(array, affine, _LAYOUT["axial"])
        else:
            src, src_aff = array, affine
        spacing = np.linalg.norm(src_aff[:3, :3], axis=0)
        if orientation == "oblique":
            dirs = _rotation(oblique_degrees) @ np.eye(3)[:, [2, 1, 0]]
        else:
            dirs = np.zeros((3, 3))
            for dst, (axis, s) in enumerate(_LAYOUT[orientation]):
                dirs[axis, dst] = s
        lin = dirs * spacing
        corners = np.array([[a, b, c, 1.0] for a in (0, src.shape[0] - 1)
                            for b in (0, src.shape[1] - 1) for c in (0, src.shape[2] - 1)]).T
        world = (src_aff @ corners)[:3]
        idx = np.linalg.solve(lin, world)
        lo, hi = np.floor(idx.min(axis=1) + 1e-6), np.ceil(idx.max(axis=1) - 1e-6)
        shape = tuple(int(n) for n in hi - lo + 1)
        new = np.eye(4)
        new[:3, :3] = lin
        new[:3, 3] = lin @ lo
        m = np.linalg.inv(src_aff) @ new
        fill = float(np.min(src)) if cval is None else float(cval)
        out = ndimage.affine_transform(src, m[:3, :3], offset=m[:3, 3], output_shape=shape,
                                       order=order, mode="constant", cval=fill,
                                       prefilter=False).astype(array.dtype, copy=False)
    if flip_slices:
        out, new = flip_slice_order(out, new)
    return out, new


def reorient_case(case: PhantomCase, orientation: str, flip_slices: bool = False,
                  **kw: object) -> PhantomCase:
    """Reorient every channel (linear) and the labels (nearest) identically."""
    images = {}
    affine = case.affine_lps
    for name, image in case.images.items():
        images[name], affine = reorient(image, case.affine_lps, orientation, flip_slices, order=1, **kw)
    labels, _ = reorient(case.labels, case.affine_lps, orientation, flip_slices, order=0, cval=0, **kw)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return replace(case, images=images, labels=labels, affine_lps=affine, spacing=spacing)
