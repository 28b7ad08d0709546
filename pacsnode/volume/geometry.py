"""Slice geometry: does a set of 2-D images form one regular 3-D grid?

Each rule has its own :class:`~pacsnode.errors.VolumeError` message (rule, value, what
is valid): too few slices, non-finite or degenerate attributes, mixed matrix sizes,
mixed pixel spacing, mixed orientations, duplicate positions, gantry tilt, missing
slices, non-uniform spacing. ``names`` (one per image, e.g. "instance 5") lets a message
say which image breaks the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pacsnode.errors import VolumeError

__all__ = ["MIN_SLICES", "SliceGeometry", "Stack", "check_frames", "orientation_key"]

MIN_SLICES = 2  # one slice has no slice spacing: it is an image, not a volume

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
        if not np.all(np.isfinite(np.asarray(ipp, dtype=np.float64))):
            raise VolumeError(
                f"ImagePositionPatient must be three finite numbers, got {[float(v) for v in ipp]}"
            )
        r = np.asarray(iop[:3], dtype=np.float64)
        c = np.asarray(iop[3:], dtype=np.float64)
        nr, nc = np.linalg.norm(r), np.linalg.norm(c)
        if not (abs(nr - 1) < 0.01 and abs(nc - 1) < 0.01 and abs(float(r @ c)) < 0.01):
            raise VolumeError(
                "ImageOrientationPatient must be two orthogonal unit vectors, "
                f"got {[round(float(v), 6) for v in iop]}"
            )
        if any(not (0 < s < np.inf) for s in pixel_spacing):
            raise VolumeError(
                f"PixelSpacing must be two positive finite numbers, got {[float(v) for v in pixel_spacing]}"
            )
        if int(rows) < 1 or int(cols) < 1:
            raise VolumeError(f"Rows and Columns must be at least 1, got {int(rows)}×{int(cols)}")
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


def _name(names: Sequence[str] | None, k: int) -> str:
    return names[k] if names is not None else f"image {k + 1}"


def _check_orientations(frames: Sequence[SliceGeometry], names: Sequence[str] | None) -> None:
    groups: dict[tuple[float, ...], list[int]] = {}
    for k, g in enumerate(frames):
        groups.setdefault(orientation_key(g), []).append(k)
    if len(groups) == 1:
        return
    ranked = sorted(groups.values(), key=lambda ks: (-len(ks), ks[0]))
    major, rest = ranked[0], [k for ks in ranked[1:] for k in ks]

    def iop(k: int) -> str:
        return _fmt((*frames[k].row_cosine, *frames[k].column_cosine))

    valid = "a series of parallel slices (plus at most a few localizers) is valid"
    if len(rest) == 1 and len(major) > 1:
        k = rest[0]
        raise VolumeError(
            "all images of a volume must share one ImageOrientationPatient, got "
            f"{_name(names, k)} at {_fmt(frames[k].position)} with {iop(k)} where the other "
            f"{len(major)} images have {iop(major[0])}; {valid}"
        )
    parts = [f"{iop(ks[0])} in {len(ks)} image(s), e.g. {_name(names, ks[0])} at {_fmt(frames[ks[0]].position)}"
             for ks in ranked]
    raise VolumeError(
        f"all images of a volume must share one ImageOrientationPatient, got {len(groups)} orientations: "
        + "; ".join(parts) + f"; {valid}"
    )


def check_frames(
    frames: Sequence[SliceGeometry],
    *,
    spacing_tolerance: float = 0.01,
    names: Sequence[str] | None = None,
) -> Stack:
    """Check that ``frames`` form one regular grid and return its sort order and affine.

    ``names`` (same length as ``frames``) name the images in error messages.
    """
    if names is not None and len(names) != len(frames):
        raise ValueError(f"names must have one entry per frame, got {len(names)} for {len(frames)} frames")
    if len(frames) < MIN_SLICES:
        got = f"1 ({_name(names, 0)} at {_fmt(frames[0].position)})" if frames else "0"
        raise VolumeError(
            f"a volume needs at least {MIN_SLICES} slices, got {got}; a series of {MIN_SLICES} or more "
            "parallel, equally spaced slices is valid (a single image has no slice spacing)"
        )
    sizes = sorted({(g.rows, g.cols) for g in frames})
    if len(sizes) > 1:
        counts = {sz: sum(1 for g in frames if (g.rows, g.cols) == sz) for sz in sizes}
        odd = min(sizes, key=lambda sz: (counts[sz], sz))
        k = next(i for i, g in enumerate(frames) if (g.rows, g.cols) == odd)
        raise VolumeError(
            "all images of a volume must have the same matrix size (Rows × Columns), got "
            + ", ".join(f"{r}×{c}" for r, c in sizes)
            + f" (e.g. {_name(names, k)} is {odd[0]}×{odd[1]}); one matrix size is valid"
        )
    _check_orientations(frames, names)
    first = frames[0]
    spacings = sorted({tuple(round(s, 4) for s in g.pixel_spacing) for g in frames})
    if len(spacings) > 1:
        raise VolumeError(
            f"all images of a volume must share one PixelSpacing, got {', '.join(_fmt(s) for s in spacings)}; "
            "one PixelSpacing is valid"
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

    def at(k: int) -> str:  # the k-th image in slice order
        return f"{_name(names, int(order[k]))} at {_fmt(p_sorted[k])}"

    gaps = np.diff(d_sorted)
    dup = np.flatnonzero(gaps < POSITION_TOLERANCE_MM)
    if dup.size:
        k = int(dup[0])
        raise VolumeError(
            f"each slice position must occur once, got {dup.size} duplicate(s), "
            f"e.g. {_name(names, int(order[k]))} and {_name(names, int(order[k + 1]))} both at "
            f"{_fmt(p_sorted[k])}; one image per position is valid "
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
            f"after {at(k)} where the spacing is {dz:.4g} mm; "
            "a complete series (every slice received) is valid"
        )
    bad = np.flatnonzero(np.abs(ratio - 1) > tol)
    if bad.size:
        k = int(bad[0])
        raise VolumeError(
            f"slice spacing must be uniform within {spacing_tolerance:.0%}, got steps from "
            f"{gaps.min():.4g} to {gaps.max():.4g} mm (median {dz:.4g} mm; e.g. {gaps[k]:.4g} mm after "
            f"{at(k)}); equally spaced slices are valid"
        )
    step = span / (len(frames) - 1)
    step = n * float(step @ n)  # tilt is within tolerance: keep the grid orthogonal
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = c * ps_row
    affine[:3, 2] = r * ps_col
    affine[:3, 3] = p_sorted[0]
    return Stack(order=tuple(int(i) for i in order), affine=affine, spacing=(abs(dz), ps_row, ps_col))
