"""Seeded smooth random fields shared by the generators (numpy and scipy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["smooth_field", "parse_spacing"]


def _weights(n: int, c: int) -> np.ndarray:
    """[n, c] Gaussian interpolation weights from c control points spread over n samples."""
    x = (np.arange(n, dtype=np.float32) + 0.5) / n * c - 0.5
    d = x[:, None] - np.arange(c, dtype=np.float32)[None, :]
    w = np.exp(-0.5 * (d / 0.6) ** 2)
    return w / w.sum(axis=1, keepdims=True)


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int | tuple[int, ...] = 4,
                 order: int = 1) -> np.ndarray:
    """A smooth random field of ``shape``: coarse Gaussian noise, separably interpolated.

    ``coarse`` control points per axis set the smoothness (fewer = smoother). ``order``
    is kept for callers that want a rougher field (0: nearest control point).
    """
    if isinstance(coarse, int):
        coarse = (coarse,) * len(shape)
    out = rng.standard_normal(coarse).astype(np.float32)
    if order == 0:
        idx = [np.minimum((np.arange(n) * c) // n, c - 1) for n, c in zip(shape, coarse, strict=True)]
        return np.ascontiguousarray(out[np.ix_(*idx)])
    for axis, (n, c) in enumerate(zip(shape, coarse, strict=True)):
        # einsum without BLAS: the contraction is tiny and BLAS threads only add contention
        out = np.moveaxis(np.einsum("na,a...->n...", _weights(n, c), np.moveaxis(out, axis, 0),
                                    optimize=False), 0, axis)
    scale = float(np.sqrt(np.mean(out**2))) or 1.0
    return np.ascontiguousarray(out / scale, dtype=np.float32)


def parse_spacing(spacing: float | str | tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    """(z, y, x) millimetres from 2, "2", "1.0,1.0,3.0" or a 3-tuple; refuses non-positive values."""
    if isinstance(spacing, str):
        parts = [p for p in spacing.replace("x", ",").split(",") if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
    elif isinstance(spacing, (int, float)):
        values = [float(spacing)]
    else:
        values = [float(v) for v in spacing]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(np.isfinite(v) and 0.2 <= v <= 10 for v in values):
        raise ValueError("spacing must be one or three numbers of millimetres in 0.2..10 (z,y,x), "
                         f"got {spacing!r}")
    return (values[0], values[1], values[2])
