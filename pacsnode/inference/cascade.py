"""The second stage's extra input of a cascade: the first stage's labels, one-hot, on its grid.

As nnU-Net's ``3d_cascade_fullres`` prediction (``preprocessing_iterator_fromfiles``): the previous
stage's label map on the source grid goes through the second stage's preprocessing with the images
(``DefaultPreprocessor.run_case``): cropped to the images' nonzero box, -1 where it is 0 outside the
nonzero mask, resampled with ``resample_data_or_seg_to_shape(is_seg=True, order=1, order_z=0)``, then
``convert_labelmap_to_one_hot`` over the label values, appended after the image channels.

nnU-Net's segmentation resampling (batchgenerators' ``resize_segmentation``, order 1) interpolates each
label's indicator and takes the per-voxel argmax over the labels present (ascending), an exact tie going
to the nearest neighbour's label when it is one of the tied ones (``seg_tiebreak='nearest'``). Along a
separate low-resolution axis it takes the nearest slice. :func:`resample_segmentation` does the same
with the node's resampling (:func:`pacsnode.inference.resampling.resample_image`): the indicators' scores
in float32 (nnU-Net: float64; a near tie may round apart).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pacsnode.errors import ModelError
from pacsnode.inference.preprocessing import Preprocessed, create_nonzero_mask, determine_separate_z
from pacsnode.inference.resampling import resample_image

__all__ = ["previous_stage_path", "resample_segmentation", "previous_stage_channels"]


def previous_stage_path(model_file: Path, name: str, expected_sha256: str, digest: str) -> Path:
    """The first stage's file beside ``model_file``; ``digest`` is its sha256 as the node computes it."""
    if digest != expected_sha256:
        raise ModelError(f"{model_file.name}: previous_stage.sha256 must match {name} beside it, got "
                         f"{expected_sha256[:12]}… in the card and {digest[:12]}… on disk; copy both files of "
                         "the cascade from the same export")
    return model_file.parent / name


def resample_segmentation(seg: np.ndarray, new_shape: Sequence[int], axis: int | None) -> np.ndarray:
    """``seg`` (z, y, x) integer labels to ``new_shape`` as nnU-Net's ``resize_segmentation`` (order 1,
    argmax over the labels' interpolated indicators, exact ties to the nearest neighbour's label)."""
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(seg.shape) == new_shape:
        return seg.copy()
    labels = np.unique(seg)
    if len(labels) == 1:
        return np.full(new_shape, labels[0], dtype=seg.dtype)
    nearest = resample_image(seg.astype(np.float32), new_shape, axis=axis, order=0, order_z=0)
    nn_idx = np.searchsorted(labels, nearest).clip(0, len(labels) - 1)
    nn_idx[labels[nn_idx] != nearest] = -1
    win = np.zeros(new_shape, dtype=np.int16)
    best = np.empty(new_shape, dtype=np.float32)
    score = np.empty(new_shape, dtype=np.float32)
    nn_top = np.empty(new_shape, dtype=bool)
    for i, c in enumerate(labels):
        resample_image((seg == c).astype(np.float32), new_shape, axis=axis, order=1, order_z=0,
                       out=best if i == 0 else score)
        is_nn = nn_idx == i
        if i == 0:
            np.logical_and(is_nn, best > 0, out=nn_top)
            continue
        nn_top |= (score == best) & (score > 0) & is_nn   # the nearest label draws level: it may keep the tie
        better = score > best
        np.copyto(nn_top, is_nn, where=better)            # a label taking the lead decides afresh
        win[better] = i
        np.maximum(best, score, out=best)
    np.copyto(win, nn_idx.astype(np.int16), where=nn_top)
    return labels[win]


def previous_stage_channels(labels: np.ndarray, images: np.ndarray, pre: Preprocessed,
                            values: Sequence[int]) -> np.ndarray:
    """One float32 channel per label value in ``values``: ``labels`` (the first stage's map on the source
    grid) on the second stage's network grid (``pre``), as nnU-Net feeds a cascade."""
    sl = tuple(slice(lo, hi) for lo, hi in pre.bbox)
    seg = labels[sl].astype(np.int16)
    mask = create_nonzero_mask(np.asarray(images))[sl]
    seg[(seg == 0) & ~mask] = -1
    grid = pre.data.shape[1:]
    seg = resample_segmentation(seg, grid, determine_separate_z(pre.spacing, pre.target_spacing))
    out = np.empty((len(values), *grid), dtype=np.float32)
    for c, v in enumerate(values):
        np.equal(seg, v, out=out[c], casting="unsafe")
    return out
