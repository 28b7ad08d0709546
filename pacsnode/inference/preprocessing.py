"""nnU-Net v2 preprocessing, numpy/scipy only; ``distillation`` imports it for training.

Order as nnU-Net's ``DefaultPreprocessor.run_case_npy``: crop to the nonzero region
(bounding box over all channels, holes filled), normalize per channel (on the cropped
grid, z-score over the nonzero mask when asked), then resample to the target spacing
with ``resample_data_or_seg_to_shape``: third-order spline for images, order 1 on
one-hot for segmentations, and for anisotropic data (max/min spacing > 3) in-plane
resampling slice by slice plus order 0 along the low-resolution axis.

Differences from nnU-Net, on purpose: the data stay float32 (nnU-Net resamples in float64);
the resampling itself (:mod:`pacsnode.inference.resampling`) applies the same spline as one
float64-built matrix per axis. Values agree to ~1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from pacsnode.errors import InferenceError, VolumeError
from pacsnode.inference.resampling import linear_resize, resample_image

__all__ = [
    "ANISO_THRESHOLD",
    "PreprocessingPlan",
    "Preprocessed",
    "preprocess",
    "crop_to_nonzero",
    "create_nonzero_mask",
    "normalize",
    "compute_new_shape",
    "check_resamplable",
    "determine_separate_z",
    "resample_data_or_seg_to_shape",
    "resample_image",
    "linear_resize",
    "revert_to_source",
    "plan_from_card",
]

ANISO_THRESHOLD = 3.0


@dataclass(frozen=True)
class PreprocessingPlan:
    """The part of a model card (or nnU-Net plans) that preprocessing reads."""

    target_spacing: tuple[float, float, float]
    normalization: tuple[Any, ...]  # card.Normalization items: scheme, use_nonzero_mask, clip, mean, std
    crop_to_nonzero: bool = True
    order_data: int = 3
    order_seg: int = 1
    order_z: int = 0


def plan_from_card(card: Any) -> PreprocessingPlan:
    """The preprocessing plan of a :class:`~pacsnode.inference.card.ModelCard` (or a plan itself)."""
    if isinstance(card, PreprocessingPlan):
        return card
    return PreprocessingPlan(tuple(card.target_spacing), tuple(card.normalization), bool(card.crop_to_nonzero))


@dataclass(frozen=True)
class Preprocessed:
    """Network input and what is needed to map predictions back to the source grid."""

    data: np.ndarray                       # (C, z, y, x) float32 at the target spacing
    seg: np.ndarray | None                 # (1, z, y, x) int8/int16 at the target spacing, -1 outside the nonzero mask
    bbox: tuple[tuple[int, int], ...]      # crop box on the source grid, [lo, hi) per axis
    shape_before_crop: tuple[int, int, int]
    shape_after_crop: tuple[int, int, int]
    spacing: tuple[float, float, float]    # source spacing (z, y, x)
    target_spacing: tuple[float, float, float]


# ---------------------------------------------------------------------------------- crop
def _bbox(mask: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """[lo, hi) per axis of the True voxels, or None when there are none (no index arrays built)."""
    out = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        out.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(out)


def create_nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Voxels nonzero in any channel, holes filled (nnU-Net ``create_nonzero_mask``).

    Holes are filled inside the mask's bounding box only, which gives the same result
    (a region touching the box's border is connected to the outside) at a fraction of the cost.
    """
    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    if mask.all():
        return mask
    box = _bbox(mask)
    if box is not None:
        sl = tuple(slice(lo, hi) for lo, hi in box)
        mask[sl] = ndimage.binary_fill_holes(mask[sl])
    return mask


def crop_to_nonzero(
    data: np.ndarray, seg: np.ndarray | None = None, nonzero_label: int = -1
) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, int], ...]]:
    """Crop ``data`` (C, z, y, x) to the bounding box of its nonzero mask.

    Returns (cropped data (a view), seg with ``nonzero_label`` outside the mask, bbox).
    An all-zero image keeps its full extent.
    """
    mask = create_nonzero_mask(data)
    bbox = _bbox(mask) or tuple((0, int(s)) for s in mask.shape)
    sl = tuple(slice(lo, hi) for lo, hi in bbox)
    mask = mask[sl][None]
    data = data[(slice(None), *sl)]
    if seg is not None:
        seg = seg[(slice(None), *sl)].copy()
        seg[(seg == 0) & ~mask] = nonzero_label
    else:
        seg = np.where(mask, np.int8(0), np.int8(nonzero_label))
    return data, seg, bbox  # type: ignore[return-value]


# ----------------------------------------------------------------------------- normalize
def normalize(data: np.ndarray, seg: np.ndarray | None, schemes: Sequence[Any]) -> np.ndarray:
    """Per-channel normalization as nnU-Net's ZScore/CT/RescaleTo01/RGBTo01 schemes; a new float32 array."""
    if len(schemes) != data.shape[0]:
        raise InferenceError(f"normalization needs one scheme per channel, got {len(schemes)} for "
                             f"{data.shape[0]} channels")
    out = np.empty(data.shape, dtype=np.float32)
    for c, norm in enumerate(schemes):
        img = out[c]
        img[...] = data[c]
        if norm.scheme == "zscore":
            if norm.use_nonzero_mask:
                if seg is None:
                    raise InferenceError("z-score over the nonzero mask needs the crop mask, got none")
                # masked sums instead of gathering the masked voxels (3 passes of fancy indexing were
                # ~0.4 s of a 4 × 155×240×240 brain); mean and variance accumulate in float64
                mask = seg[0] >= 0
                n = int(np.count_nonzero(mask))
                if n:
                    mean = float(np.sum(img, where=mask, dtype=np.float64)) / n
                    dev = img - np.float32(mean)
                    np.multiply(dev, dev, out=dev)
                    std = (float(np.sum(dev, where=mask, dtype=np.float64)) / n) ** 0.5
                    del dev
                    np.subtract(img, np.float32(mean), out=img, where=mask)
                    np.divide(img, np.float32(max(std, 1e-8)), out=img, where=mask)
            else:
                mean = float(img.mean(dtype=np.float64))
                std = float(img.std(dtype=np.float64))
                img -= np.float32(mean)
                img /= np.float32(max(std, 1e-8))
        elif norm.scheme == "ct":
            lo, hi = norm.clip
            np.clip(img, lo, hi, out=img)
            img -= np.float32(norm.mean)
            img /= np.float32(max(norm.std, 1e-8))
        elif norm.scheme == "rescale01":  # nnU-Net's RescaleTo01Normalization
            img -= img.min()
            img /= np.float32(max(float(img.max()), 1e-8))
        elif norm.scheme == "rgb01":  # nnU-Net's RGBTo01Normalization
            if img.size and (img.min() < 0 or img.max() > 255):
                raise InferenceError(f"normalization rgb01 needs channel {c} in 0..255 (8-bit RGB), got "
                                     f"[{float(img.min()):g}, {float(img.max()):g}]")
            img /= np.float32(255.0)
        elif norm.scheme != "none":
            raise InferenceError(f"normalization scheme must be zscore, ct, rescale01, rgb01 or none, "
                                 f"got {norm.scheme!r}")
    return out


# ------------------------------------------------------------------------------ resample
def compute_new_shape(old_shape: Sequence[int], old_spacing: Sequence[float],
                      new_spacing: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``: round(old_spacing / new_spacing * old_shape)."""
    return tuple(int(round(s / n * k)) for s, n, k in zip(old_spacing, new_spacing, old_shape, strict=True))


_AXIS_NAMES = ("slices", "rows", "columns")


def check_resamplable(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> None:
    """Refuse a volume that resamples to nothing on some axis (extent under half a target voxel).

    A :class:`VolumeError` says how many slices (rows, columns) at this spacing are needed.
    A volume smaller than the model's patch is fine: the sliding window pads it.
    """
    for axis, (k, s, t) in enumerate(zip(shape, spacing, target_spacing, strict=True)):
        if not (s > 0 and np.isfinite(s)):
            raise VolumeError(f"spacing must be positive and finite on every axis, got {list(spacing)} (z, y, x)")
        if int(round(s / t * k)) >= 1:
            continue
        need = max(1, int(np.ceil(0.5 * t / s)))
        while int(round(s / t * need)) < 1:
            need += 1
        raise VolumeError(
            f"a volume needs at least {need} {_AXIS_NAMES[axis]} at {s:.4g} mm for the model's target spacing "
            f"of {t:.4g} mm, got {k}; a series spanning at least half a target voxel on every axis is valid"
        )


def _lowres_axis(spacing: Sequence[float]) -> list[int]:
    sp = np.asarray(spacing, dtype=float)
    return [int(i) for i in np.where(max(sp) / sp == 1)[0]]


def determine_separate_z(current_spacing: Sequence[float], new_spacing: Sequence[float],
                         threshold: float = ANISO_THRESHOLD) -> int | None:
    """The low-resolution axis to resample separately, or None (nnU-Net ``determine_do_sep_z_and_axis``)."""
    if max(current_spacing) / min(current_spacing) > threshold:
        axis = _lowres_axis(current_spacing)
    elif max(new_spacing) / min(new_spacing) > threshold:
        axis = _lowres_axis(new_spacing)
    else:
        return None
    return axis[0] if len(axis) == 1 else None


def _resample_seg(seg: np.ndarray, new_shape: Sequence[int], *, axis: int | None, order: int,
                  order_z: int) -> np.ndarray:
    """nnU-Net ``resize_segmentation``: per label one-hot, resample, >= 0.5 (order 0: nearest)."""
    out = np.zeros(new_shape, dtype=seg.dtype)
    if tuple(seg.shape) == tuple(new_shape):
        out[...] = seg
        return out
    if order == 0 and (axis is None or order_z == 0):
        tmp = resample_image(seg.astype(np.float32), new_shape, axis=axis, order=0, order_z=0)
        out[...] = tmp.astype(seg.dtype)
        return out
    buf = np.empty(new_shape, dtype=np.float32)
    for label in np.unique(seg):
        if label == 0:
            continue
        resample_image((seg == label).astype(np.float32), new_shape, axis=axis, order=order,
                       order_z=order_z, out=buf)
        out[buf >= 0.5] = label
    return out


def resample_data_or_seg_to_shape(
    data: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    is_seg: bool = False,
    order: int = 3,
    order_z: int = 0,
    threshold: float = ANISO_THRESHOLD,
) -> np.ndarray:
    """nnU-Net's function of the same name for (C, z, y, x) arrays; float32 out for images."""
    axis = determine_separate_z(current_spacing, new_spacing, threshold)
    new_shape = tuple(int(s) for s in new_shape)
    if is_seg:
        return np.stack([_resample_seg(d, new_shape, axis=axis, order=order, order_z=order_z) for d in data])
    out = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    for c in range(data.shape[0]):
        resample_image(np.asarray(data[c], dtype=np.float32), new_shape, axis=axis, order=order,
                       order_z=order_z, out=out[c])
    return out


# ---------------------------------------------------------------------------- public API
def preprocess(images: np.ndarray, spacing: Sequence[float], plan: Any, seg: np.ndarray | None = None
               ) -> Preprocessed:
    """Crop, normalize and resample ``images`` (C, z, y, x) float32 at ``spacing`` (z, y, x).

    ``plan`` is a :class:`PreprocessingPlan` or a model card. ``seg`` (1, z, y, x) integer
    labels are cropped and resampled alongside (training); the returned ``seg`` has -1
    outside the nonzero mask, as nnU-Net's.
    """
    plan = plan_from_card(plan)
    images = np.asarray(images)
    if images.ndim != 4:
        raise InferenceError(f"images must be 4-D (C, z, y, x), got shape {images.shape}")
    if len(plan.normalization) != images.shape[0]:
        raise InferenceError(f"images must have one channel per normalization entry ({len(plan.normalization)}), "
                             f"got {images.shape[0]}")
    if seg is not None and seg.ndim == 3:
        seg = seg[None]
    shape_before = tuple(int(s) for s in images.shape[1:])
    check_resamplable(shape_before, spacing, plan.target_spacing)
    if plan.crop_to_nonzero:
        data, seg_c, bbox = crop_to_nonzero(images, seg)
    else:
        data = images
        bbox = tuple((0, s) for s in shape_before)
        mask = create_nonzero_mask(images)[None]
        if seg is None:
            seg_c = np.where(mask, np.int8(0), np.int8(-1))
        else:
            seg_c = seg.copy()
            seg_c[(seg_c == 0) & ~mask] = -1
    shape_after = tuple(int(s) for s in data.shape[1:])
    # a crop thinner than half a target voxel keeps one voxel (nnU-Net would resample to 0 and fail)
    new_shape = tuple(max(1, n) for n in compute_new_shape(shape_after, spacing, plan.target_spacing))
    normed = normalize(data, seg_c, plan.normalization)
    del data
    resampled = resample_data_or_seg_to_shape(normed, new_shape, spacing, plan.target_spacing,
                                              order=plan.order_data, order_z=plan.order_z)
    del normed
    seg_out = None
    if seg is not None:
        seg_out = resample_data_or_seg_to_shape(seg_c, new_shape, spacing, plan.target_spacing, is_seg=True,
                                                order=plan.order_seg, order_z=plan.order_z)
    return Preprocessed(
        data=resampled, seg=seg_out, bbox=bbox, shape_before_crop=shape_before,  # type: ignore[arg-type]
        shape_after_crop=shape_after, spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        target_spacing=tuple(plan.target_spacing),  # type: ignore[arg-type]
    )


def revert_to_source(
    logits: np.ndarray,
    pre: Preprocessed,
    *,
    order: int = 1,
    order_z: int = 0,
    fill: Sequence[float] | None = None,
) -> np.ndarray:
    """The inverse of :func:`preprocess` for per-class maps (K, z, y, x) at the target spacing.

    Each class is resampled back to the cropped source grid (order 1, order 0 along a
    low-resolution axis, as nnU-Net's ``resampling_fn_probabilities``) and placed in the
    full source grid; ``fill`` gives the value outside the crop box per class (default 0).
    Returns float32 (K, *shape_before_crop). For label maps use the pipeline's streaming
    argmax, which never holds all classes on the source grid.
    """
    k = logits.shape[0]
    out = np.zeros((k, *pre.shape_before_crop), dtype=np.float32)
    if fill is not None:
        for c in range(k):
            out[c] = fill[c]
    sl = tuple(slice(lo, hi) for lo, hi in pre.bbox)
    axis = determine_separate_z(pre.target_spacing, pre.spacing)
    for c in range(k):
        resample_image(logits[c], pre.shape_after_crop, axis=axis, order=order, order_z=order_z,
                       out=out[(c, *sl)])
    return out
