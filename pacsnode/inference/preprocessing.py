"""nnU-Net v2 preprocessing, numpy, scipy and cc3d only; ``distillation`` imports it for training.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pacsnode.errors import InferenceError, VolumeError
from pacsnode.inference.nonzero import (
    bounding_box,
    create_nonzero_mask,
    crop_to_nonzero,
    fill_holes,
    nonzero_any,
)
from pacsnode.inference.resampling import linear_resize, one_blas_thread, resample_image
from pacsnode.inference.threads import per_item

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


# ----------------------------------------------------------------------------- normalize
def _needs_mask(schemes: Sequence[Any]) -> bool:
    return any(n.scheme == "zscore" and n.use_nonzero_mask for n in schemes)


def normalize(data: np.ndarray | Sequence[np.ndarray], seg: np.ndarray | None, schemes: Sequence[Any], *,
              mask: np.ndarray | None = None) -> np.ndarray:
    """Per-channel normalization as nnU-Net's ZScore/CT/RescaleTo01/RGBTo01 schemes; a new float32 array.

    ``data`` is (C, z, y, x) or one 3-D array per channel; the z-score over the nonzero mask
    takes ``mask`` or else ``seg[0] >= 0`` (the crop's seg, -1 outside the mask).
    """
    if len(schemes) != len(data):
        raise InferenceError(f"normalization needs one scheme per channel, got {len(schemes)} for "
                             f"{len(data)} channels")
    out = np.empty((len(data), *np.shape(data[0])), dtype=np.float32)
    mask = _zscore_mask(seg, mask) if _needs_mask(schemes) else None
    for c, norm in enumerate(schemes):
        normalize_channel(data[c], norm, c, out[c], mask)
    return out


def _zscore_mask(seg: np.ndarray | None, mask: np.ndarray | None) -> np.ndarray:
    if mask is not None:
        return mask
    if seg is None:
        raise InferenceError("z-score over the nonzero mask needs the crop mask, got none")
    return seg[0] >= 0


def normalize_channel(src: np.ndarray, norm: Any, c: int, img: np.ndarray, mask: np.ndarray | None) -> None:
    """Channel ``c`` (``src``, any strides) normalized by ``norm`` into ``img`` (float32, its shape).

    ``mask`` is the nonzero mask for a z-score over it. Mean and variance accumulate in float64
    from masked sums (3 passes of fancy indexing were ~0.4 s of a 4 × 155×240×240 brain).
    """
    img[...] = src
    if norm.scheme == "zscore":
        if norm.use_nonzero_mask:
            if mask is None:
                raise InferenceError("z-score over the nonzero mask needs the crop mask, got none")
            n = int(np.count_nonzero(mask))
            if n:
                mean = float(np.sum(img, where=mask, dtype=np.float64)) / n
                dev = np.subtract(img, np.float32(mean))
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
def preprocess(images: np.ndarray | Sequence[np.ndarray], spacing: Sequence[float], plan: Any,
               seg: np.ndarray | None = None) -> Preprocessed:
    """Crop, normalize and resample ``images`` (C, z, y, x), or one 3-D array per channel, at ``spacing`` (z, y, x).

    ``plan`` is a :class:`PreprocessingPlan` or a model card. ``seg`` (1, z, y, x) integer
    labels are cropped and resampled alongside (training); the returned ``seg`` has -1
    outside the nonzero mask, as nnU-Net's.

    The channels are normalized and resampled in parallel (:func:`_per_channel`); the nonzero
    mask's holes are filled only where something reads the mask (a z-score over it, or ``seg``):
    the crop box is the same with or without them.
    """
    plan = plan_from_card(plan)
    channels = _channels(images)
    if len(plan.normalization) != len(channels):
        raise InferenceError(f"images must have one channel per normalization entry ({len(plan.normalization)}), "
                             f"got {len(channels)}")
    if seg is not None and seg.ndim == 3:
        seg = seg[None]
    shape_before = tuple(int(s) for s in channels[0].shape)
    check_resamplable(shape_before, spacing, plan.target_spacing)
    mask = nonzero_any(channels)
    bbox = (bounding_box(mask) if plan.crop_to_nonzero else None) or tuple((0, s) for s in shape_before)
    sl = tuple(slice(lo, hi) for lo, hi in bbox)
    norm_mask = seg_c = None
    if seg is not None or _needs_mask(plan.normalization):
        mask = fill_holes(mask)[sl]
        norm_mask = mask
        if seg is not None:
            seg_c = seg[(slice(None), *sl)].copy()
            seg_c[(seg_c == 0) & ~mask[None]] = -1
            norm_mask = seg_c[0] >= 0
    del mask
    data = [ch[sl] for ch in channels]
    shape_after = tuple(int(s) for s in data[0].shape)
    # a crop thinner than half a target voxel keeps one voxel (nnU-Net would resample to 0 and fail)
    new_shape = tuple(max(1, n) for n in compute_new_shape(shape_after, spacing, plan.target_spacing))
    axis = determine_separate_z(spacing, plan.target_spacing)
    resampled = np.empty((len(data), *new_shape), dtype=np.float32)

    def channel(c: int) -> None:
        if shape_after == new_shape:  # the model's spacing is the source's: normalised in place, no copy
            normalize_channel(data[c], plan.normalization[c], c, resampled[c], norm_mask)
            return
        normed = np.empty(shape_after, dtype=np.float32)
        normalize_channel(data[c], plan.normalization[c], c, normed, norm_mask)
        resample_image(normed, new_shape, axis=axis, order=plan.order_data, order_z=plan.order_z,
                       out=resampled[c])

    _per_channel(channel, len(data))
    seg_out = None
    if seg_c is not None:
        seg_out = resample_data_or_seg_to_shape(seg_c, new_shape, spacing, plan.target_spacing, is_seg=True,
                                                order=plan.order_seg, order_z=plan.order_z)
    return Preprocessed(
        data=resampled, seg=seg_out, bbox=bbox, shape_before_crop=shape_before,  # type: ignore[arg-type]
        shape_after_crop=shape_after, spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        target_spacing=tuple(plan.target_spacing),  # type: ignore[arg-type]
    )


def _channels(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise InferenceError(f"images must be 4-D (C, z, y, x), got shape {images.shape}")
        return list(images)
    channels = [np.asarray(ch) for ch in images]
    shapes = {ch.shape for ch in channels}
    if not channels or len(shapes) != 1 or channels[0].ndim != 3:
        raise InferenceError(f"images must be one 3-D array per channel, all of one shape, got shapes "
                             f"{[ch.shape for ch in channels]}")
    return channels


def _per_channel(fn: Callable[[int], None], n: int) -> None:
    """``fn(c)`` for every channel on two threads (:mod:`pacsnode.inference.threads`), the BLAS
    limit to one thread taken once around them."""
    with one_blas_thread():
        per_item(fn, n)


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
