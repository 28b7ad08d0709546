"""Post-processing of label maps: keep the largest connected component of chosen labels."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cc3d
import numpy as np

__all__ = ["keep_largest_component"]


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
    steps run in order, each on the result of the one before. Components are 26-connected (full
    connectivity, as nnU-Net's skimage-based labelling); components tied for the largest all stay
    (acvl_utils' filter keeps every maximum).

    Components are labelled by cc3d (connected-components-3d) inside the bounding box of each
    step's voxels only: on a 1 mm brain the whole step took ~0.15 s with scipy's ``ndimage.label``
    over the foreground's box for each of three labels, ~10 ms this way; the result is the same
    (``tests/test_inference_postprocessing.py`` checks it against scipy on the whole grid).
    """
    box = _box(labels != background)
    if box is None:
        return labels
    _keep_largest(labels[box], values, background)
    return labels


def _keep_largest(labels: np.ndarray, values: Iterable[int | Sequence[int]], background: int) -> None:
    for value in values:
        mask = np.isin(labels, list(value)) if isinstance(value, Sequence) else labels == value
        box = _box(mask)
        if box is None:  # the label is absent
            continue
        mask = mask[box]
        components, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        sizes[0] = 0
        largest = np.flatnonzero(sizes == sizes.max())
        if largest.size == 1:
            drop = components != largest[0]
            drop &= mask
        else:  # components tied for largest all stay
            keep = np.zeros(n + 1, dtype=bool)
            keep[largest] = True
            drop = mask & ~keep[components]
        labels[box][drop] = background
