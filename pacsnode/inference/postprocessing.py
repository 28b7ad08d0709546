"""Post-processing of label maps: keep the largest connected component of chosen labels."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["keep_largest_component"]

_FULL = np.ones((3, 3, 3), dtype=bool)  # full (26-) connectivity, as nnU-Net's skimage-based labelling


def _box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the True voxels, or None when there are none."""
    out = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        out.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(out)


def keep_largest_component(labels: np.ndarray, values: Iterable[int | Sequence[int]],
                           background: int = 0) -> np.ndarray:
    """Set every component of each label in ``values`` except its largest to ``background`` (in place).

    A step that is a sequence of values keeps the largest component of their union (nnU-Net's
    ``remove_all_but_largest_component_from_segmentation`` with a list of labels or a region);
    steps run in order, each on the result of the one before.

    Components are labelled inside the bounding box of the foreground only (a tumour is a few
    percent of a brain volume: 0.24 s → a few ms for a 155×240×240 grid); the result is the same.
    """
    box = _box(labels != background)
    if box is None:
        return labels
    whole, labels = labels, labels[box]
    _keep_largest(labels, values, background)
    return whole


def _keep_largest(labels: np.ndarray, values: Iterable[int | Sequence[int]], background: int) -> None:
    for value in values:
        mask = np.isin(labels, list(value)) if isinstance(value, Sequence) else labels == value
        components, n = ndimage.label(mask, structure=_FULL)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        keep = sizes == sizes.max()  # components tied for largest all stay (acvl_utils' filter keeps every max)
        labels[mask & ~keep[components]] = background
