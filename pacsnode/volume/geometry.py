"""Slice geometry: does a set of 2-D images form one regular 3-D grid?

Each rule has its own :class:`~pacsnode.errors.VolumeError` message (rule, value, what
is valid): mixed matrix sizes, mixed pixel spacing, mixed orientations, duplicate
positions, gantry tilt, missing slices, non-uniform spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pacsnode.errors import VolumeError

__all__ = ["SliceGeometry", "Stack", "check_frames", "orientation_key"]

ORIENTATION_TOLERANCE = 1e-3   # cosine components: images within this share an orientation
TILT_TOLERANCE_DEG = 0.1       # angle between the slice step and the slice normal
POSITION_TOLERANCE_MM = 1e-3   # positions closer than this (along the normal) are duplicates


@dataclass(frozen=True)
class SliceGeometry:
    """Where one 2-D image lies in patient space (LPS, mm)."""

    position: tuple[float, float, float]
    row_cosine: tuple[float, float, float]     # direction of increasing column index j
    column_cosine: tuple[float, float, float]  # direction of increasing row index i
    pixel_spacing: tuple[float, float]         # (row spacing = between rows, column spacing)
    rows: int
    cols: int

    @classmethod
    def from_attributes(
        cls, ipp: Sequence[float], iop: Sequence[float], pixel_spacing: Sequence[float], rows: int, cols: int
    ) -> SliceGeometry:
        r = np.asarray(iop[:3], dtype=np.float64)
        c = np.asarray(iop[3:], dtype=np.float64)
        nr, nc = np.linalg.norm(r), np.linalg.norm(c)
        if not (abs(nr - 1) < 0.01 and abs(nc - 1) < 0.01 and abs(float(r @ c)) < 0.01):
            raise VolumeError(
                "ImageOrientationPatient must be two orthogonal unit vectors, "
                f"got {[round(float(v), 6) for v in iop]}"
            )
        if any(not (s > 0) for s in pixel_spacing):
            raise VolumeError(f"PixelSpacing must be two positive numbers, got {list(pixel_spacing)}")
        r, c = r / nr, c / nc
        return cls(
            position=tuple(float(v) for v in ipp),  # type: ignore[arg-type]
            row_cosine=tuple(float(v) for v in r),  # type: ignore[arg-type]
            column_cosine=tuple(float(v) for v in c),  # type: ignore[arg-type]
            pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
            rows=int(rows),
            cols=int(cols),
        )

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cosine, self.column_cosine)


def orientation_key(g: SliceGeometry) -> tuple[float, ...]:
    """A hashable orientation, rounded so that numerically equal orientations compare equal."""
    return tuple(round(v / ORIENTATION_TOLERANCE) * ORIENTATION_TOLERANCE + 0.0
                 for v in (*g.row_cosine, *g.column_cosine))


@dataclass(frozen=True)
class Stack:
    """The checked grid: ``order`` sorts the input images along the normal."""

    order: tuple[int, ...]
    affine: np.ndarray
    spacing: tuple[float, float, float]


def _fmt(v: Sequence[float]) -> str:
    return "[" + ", ".join(f"{float(x):.4g}" for x in v) + "]"


def check_frames(
    frames: Sequence[SliceGeometry],
    *,
    spacing_tolerance: float = 0.01,
    default_slice_spacing: float = 1.0,
) -> Stack:
    """Check that ``frames`` form one regular grid and return its sort order and affine."""
    if not frames:
        raise VolumeError("a volume needs at least one image, got none")
    sizes = sorted({(g.rows, g.cols) for g in frames})
    if len(sizes) > 1:
        raise VolumeError(
            "all images of a volume must have the same matrix size (Rows × Columns), got "
            + ", ".join(f"{r}×{c}" for r, c in sizes)
            + "; one matrix size is valid"
        )
    first = frames[0]
    keys = {orientation_key(g) for g in frames}
    if len(keys) > 1:
        raise VolumeError(
            "all images of a volume must share one ImageOrientationPatient, got "
            f"{len(keys)} orientations (e.g. {_fmt(sorted(keys)[0])} and {_fmt(sorted(keys)[1])}); "
            "a series of parallel slices (plus at most a few localizers) is valid"
        )
    spacings = sorted({tuple(round(s, 4) for s in g.pixel_spacing) for g in frames})
    if len(spacings) > 1:
        raise VolumeError(
            f"all images of a volume must share one PixelSpacing, got {', '.join(_fmt(s) for s in spacings)}"
        )
    r = np.asarray(first.row_cosine)
    c = np.asarray(first.column_cosine)
    n = first.normal
    positions = np.array([g.position for g in frames], dtype=np.float64)
    d = positions @ n
    order = np.argsort(d, kind="stable")
    d_sorted = d[order]
    p_sorted = positions[order]
    ps_row, ps_col = first.pixel_spacing

    if len(frames) == 1:
        dz = float(default_slice_spacing)
        step = n * dz
    else:
        gaps = np.diff(d_sorted)
        dup = np.flatnonzero(gaps < POSITION_TOLERANCE_MM)
        if dup.size:
            k = int(dup[0])
            raise VolumeError(
                f"each slice position must occur once, got {dup.size} duplicate(s), "
                f"e.g. two images at {_fmt(p_sorted[k])}; one image per position is valid "
                "(split multi-echo or multi-phase acquisitions into separate series)"
            )
        span = p_sorted[-1] - p_sorted[0]
        along = float(span @ n)
        across = float(np.linalg.norm(span - along * n))
        tilt = float(np.degrees(np.arctan2(across, abs(along))))
        if tilt > TILT_TOLERANCE_DEG:
            raise VolumeError(
                f"slices must be stacked along the slice normal (no gantry tilt), got a tilt of {tilt:.2f}° "
                f"between the slice positions and the normal of the rows/columns plane; "
                f"at most {TILT_TOLERANCE_DEG}° is valid (resample tilted acquisitions first)"
            )
        dz = float(np.median(gaps))
        ratio = gaps / dz
        tol = max(spacing_tolerance, POSITION_TOLERANCE_MM / dz)
        multiples = np.rint(ratio)
        missing = np.flatnonzero((multiples >= 2) & (np.abs(ratio - multiples) <= tol * multiples))
        if missing.size:
            k = int(missing[0])
            n_missing = int(np.sum(multiples[missing] - 1))
            raise VolumeError(
                f"a series must have no missing slices, got {n_missing} missing: a gap of {gaps[k]:.4g} mm "
                f"after the slice at {_fmt(p_sorted[k])} where the spacing is {dz:.4g} mm; "
                "a complete series (every slice received) is valid"
            )
        bad = np.flatnonzero(np.abs(ratio - 1) > tol)
        if bad.size:
            raise VolumeError(
                f"slice spacing must be uniform within {spacing_tolerance:.0%}, got steps from "
                f"{gaps.min():.4g} to {gaps.max():.4g} mm (median {dz:.4g} mm); "
                "equally spaced slices are valid"
            )
        step = span / (len(frames) - 1)
        step = n * float(step @ n)  # tilt is within tolerance: keep the grid orthogonal
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = c * ps_row
    affine[:3, 2] = r * ps_col
    affine[:3, 3] = p_sorted[0]
    return Stack(order=tuple(int(i) for i in order), affine=affine, spacing=(abs(dz), ps_row, ps_col))
