"""Patch sampling as nnU-Net does it: a third of each batch centred on foreground.

In a batch of ``B`` the samples from index ``round(B · (1 - oversample))`` on are forced to
contain foreground (nnU-Net's ``get_do_oversample``): a present foreground class is picked
uniformly, then one of its voxels, and the patch is centred there (clamped to the volume).
Other samples take a uniformly random patch. Volumes smaller than the patch are zero-padded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distillation.data.preprocess import PreprocessedCase

__all__ = ["forced_foreground", "sample_patch"]


def forced_foreground(index: int, batch_size: int, oversample: float = 0.33) -> bool:
    """Whether sample ``index`` of a batch must contain foreground (nnU-Net's rule)."""
    return not index < round(batch_size * (1 - oversample))


def sample_patch(case: PreprocessedCase, patch_size: Sequence[int], force_fg: bool,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image patch (C, *patch), label patch (*patch) int8)."""
    shape = np.array(case.seg.shape)
    patch = np.array(patch_size)
    pad_before = np.maximum(patch - shape, 0) // 2
    padded = np.maximum(shape, patch)
    hi = padded - patch  # inclusive upper bound of the lower corner
    lower = None
    if force_fg and case.class_locations:
        classes = sorted(case.class_locations)
        k = classes[int(rng.integers(len(classes)))]
        locs = case.class_locations[k]
        centre = locs[int(rng.integers(len(locs)))] + pad_before
        lower = np.clip(centre - patch // 2, 0, hi)
    if lower is None:
        lower = np.array([int(rng.integers(0, h + 1)) for h in hi])
    # crop in original coordinates, then pad what falls outside
    start = lower - pad_before
    src = tuple(slice(max(s, 0), min(s + p, n)) for s, p, n in zip(start, patch, shape, strict=True))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start, strict=True))
    img = np.zeros((case.data.shape[0], *patch), np.float32)
    seg = np.zeros(tuple(patch), np.int8)
    img[(slice(None), *dst)] = case.data[(slice(None), *src)]
    seg[dst] = case.seg[src]
    return img, seg
