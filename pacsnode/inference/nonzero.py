"""The nonzero region of a multi-channel image: its mask (holes filled) and the crop to its box.

nnU-Net's ``create_nonzero_mask`` and ``crop_to_nonzero``; holes are filled by labelling the
background once with cc3d (connected-components-3d) instead of scipy's iterated dilation, with
the same result (``tests/test_inference_preprocessing.py`` compares them).
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np

__all__ = ["bounding_box", "nonzero_any", "fill_holes", "create_nonzero_mask", "crop_to_nonzero"]


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """[lo, hi) per axis of the True voxels, or None when there are none (no index arrays built)."""
    out = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        out.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(out)


def nonzero_any(channels: Sequence[np.ndarray]) -> np.ndarray:
    """Voxels nonzero in any channel (one bool buffer, no temporary per channel). One thread: split
    over two it was slower on this 2-CPU machine (memory-bound), at load 11 and at its best."""
    mask = np.not_equal(channels[0], 0)
    if len(channels) > 1:
        tmp = np.empty_like(mask)
        for ch in channels[1:]:
            np.not_equal(ch, 0, out=tmp)
            mask |= tmp
    return mask


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` (6-connected background) of ``mask``, in place, inside its bounding box.

    The background is labelled once (cc3d) and its components touching the box's faces are the
    outside; the rest are holes. A region touching the box's border is connected to the outside,
    so the box gives the same result as the whole grid. On a 1 mm brain: ~30 ms, scipy's iterated
    dilation ~150-300 ms.
    """
    if mask.all():
        return mask
    box = bounding_box(mask)
    if box is None:
        return mask
    sub = mask[tuple(slice(lo, hi) for lo, hi in box)]
    components, n = cc3d.connected_components(~sub, connectivity=6, return_N=True)
    if n == 0:
        return mask
    outside = np.zeros(n + 1, dtype=bool)
    for axis in range(3):
        for end in (0, -1):
            outside[np.take(components, end, axis=axis).ravel()] = True
    outside[0] = False  # label 0: the mask's own voxels
    if outside[1:].all():  # no holes (the usual case): no pass over the box
        return mask
    sub |= ~outside[components]
    return mask


def create_nonzero_mask(data: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Voxels nonzero in any channel, holes filled (nnU-Net ``create_nonzero_mask``).

    ``data`` is (C, z, y, x) or one 3-D array per channel. Holes are filled inside the mask's
    bounding box only, which gives the same result (a region touching the box's border is
    connected to the outside) at a fraction of the cost.
    """
    return fill_holes(nonzero_any(data))


def crop_to_nonzero(
    data: np.ndarray, seg: np.ndarray | None = None, nonzero_label: int = -1
) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, int], ...]]:
    """Crop ``data`` (C, z, y, x) to the bounding box of its nonzero mask.

    Returns (cropped data (a view), seg with ``nonzero_label`` outside the mask, bbox).
    An all-zero image keeps its full extent.
    """
    mask = create_nonzero_mask(data)
    bbox = bounding_box(mask) or tuple((0, int(s)) for s in mask.shape)
    sl = tuple(slice(lo, hi) for lo, hi in bbox)
    mask = mask[sl][None]
    data = data[(slice(None), *sl)]
    if seg is not None:
        seg = seg[(slice(None), *sl)].copy()
        seg[(seg == 0) & ~mask] = nonzero_label
    else:
        seg = np.where(mask, np.int8(0), np.int8(nonzero_label))
    return data, seg, bbox  # type: ignore[return-value]
