"""Post-processing of label maps: keep the largest connected component of chosen labels."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

__all__ = ["keep_largest_component"]

_FULL = np.ones((3, 3, 3), dtype=bool)  # full (26-) connectivity, as nnU-Net's skimage-based labelling


def keep_largest_component(labels: np.ndarray, values: Iterable[int], background: int = 0) -> np.ndarray:
    """Set every component of each label in ``values`` except its largest to ``background`` (in place)."""
    for value in values:
        mask = labels == value
        components, n = ndimage.label(mask, structure=_FULL)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        labels[mask & (components != int(np.argmax(sizes)))] = background
    return labels
