"""Sliding-window prediction as nnU-Net v2's ``nnUNetPredictor`` does it, in float32 numpy.

Gaussian importance map (sigma = patch / 8, peak scaled to 10, in float16 as nnU-Net
makes it, zeros replaced by the smallest nonzero value), tile starts from ``compute_steps_for_sliding_window``, zero
padding (centred) for volumes smaller than the patch, optional mirroring averaged over
every combination of the mirror axes. Aggregation buffers are float32 on the
preprocessed (cropped, resampled) grid; nothing per class is float64.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

from pacsnode.errors import InferenceError

__all__ = ["compute_gaussian", "compute_steps_for_sliding_window", "pad_to_patch", "predict_sliding_window"]

Predictor = Callable[[np.ndarray], np.ndarray]  # (1, C, *patch) float32 -> (1, K, *patch)


@lru_cache(maxsize=4)
def _gaussian(tile_size: tuple[int, ...], sigma_scale: float, value_scaling_factor: float) -> np.ndarray:
    tmp = np.zeros(tile_size)
    tmp[tuple(i // 2 for i in tile_size)] = 1
    g = gaussian_filter(tmp, [i * sigma_scale for i in tile_size], 0, mode="constant", cval=0)
    g /= g.max() / value_scaling_factor
    # nnU-Net v2 makes the map float16 (compute_gaussian's default dtype) before replacing zeros:
    # its tail is float16's (subnormal or zero far from the centre), and these weights decide the
    # blend where windows overlap; aggregation stays float32 (nnU-Net accumulates in float16)
    g = g.astype(np.float16)
    g[g == 0] = g[g != 0].min()
    g = g.astype(np.float32)
    g.setflags(write=False)
    return g


def compute_gaussian(tile_size: Sequence[int], sigma_scale: float = 1.0 / 8,
                     value_scaling_factor: float = 10.0) -> np.ndarray:
    """nnU-Net's ``compute_gaussian`` (float32, read-only, cached). A window of depth 1 on an axis (a 2-D
    model run slice by slice) gets the Gaussian of the remaining axes, as nnU-Net builds it for the 2-D patch."""
    tile = tuple(int(t) for t in tile_size)
    if 1 in tile and len(tile) > 1:
        flat = _gaussian(tuple(t for t in tile if t != 1), float(sigma_scale), float(value_scaling_factor))
        return flat.reshape(tile)
    return _gaussian(tile, float(sigma_scale), float(value_scaling_factor))


def compute_steps_for_sliding_window(image_size: Sequence[int], tile_size: Sequence[int],
                                     tile_step_size: float) -> list[list[int]]:
    """nnU-Net's tile start positions per axis (image at least as large as the tile). An axis where the tile
    is 1 (a 2-D model's slice axis) starts a window at every position, each once, as nnU-Net's 2-D slicers."""
    if any(i < t for i, t in zip(image_size, tile_size, strict=True)):
        raise InferenceError(f"image must be at least the patch size, got {list(image_size)} < {list(tile_size)}")
    if not 0 < tile_step_size <= 1:
        raise InferenceError(f"tile step must be in (0, 1], got {tile_step_size}")
    target = [t * tile_step_size for t in tile_size]
    num_steps = [int(np.ceil((i - k) / j)) + 1 for i, j, k in zip(image_size, target, tile_size, strict=True)]
    steps = []
    for dim in range(len(tile_size)):
        if tile_size[dim] == 1:
            steps.append(list(range(int(image_size[dim]))))
            continue
        max_step = image_size[dim] - tile_size[dim]
        actual = max_step / (num_steps[dim] - 1) if num_steps[dim] > 1 else 99999999999
        steps.append([int(np.round(actual * i)) for i in range(num_steps[dim])])
    return steps


def pad_to_patch(data: np.ndarray, patch: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad (C, z, y, x) to at least ``patch`` (centred as acvl_utils' ``pad_nd_image``)."""
    shape = data.shape[1:]
    diff = [max(0, p - s) for p, s in zip(patch, shape, strict=True)]
    if not any(diff):
        return data, (slice(None),) * 4
    pads = [(d // 2, d - d // 2) for d in diff]
    padded = np.pad(data, [(0, 0), *pads], mode="constant", constant_values=0)
    revert = (slice(None), *(slice(lo, lo + s) for (lo, _), s in zip(pads, shape, strict=True)))
    return padded, revert


def num_windows(shape: Sequence[int], patch: Sequence[int], step: float) -> int:
    padded = [max(s, p) for s, p in zip(shape, patch, strict=True)]
    return int(np.prod([len(s) for s in compute_steps_for_sliding_window(padded, patch, step)]))


def predict_sliding_window(
    data: np.ndarray,
    predictor: Predictor,
    num_classes: int,
    patch_size: Sequence[int],
    *,
    tile_step: float = 0.5,
    mirror_axes: Sequence[int] = (),
    use_gaussian: bool = True,
    aggregation: str = "float32",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Aggregated logits (K, z, y, x) float32 for preprocessed ``data`` (C, z, y, x).

    ``predictor`` maps one (1, C, *patch) float32 window to (1, K, *patch) logits.
    ``mirror_axes`` are spatial axes (0, 1, 2 = z, y, x). ``aggregation="float16"`` sums the
    Gaussian-weighted logits and the weights in float16, each addition rounded once from float32,
    and divides in float16, as ``nnUNetPredictor.predict_sliding_window_return_logits`` does (on
    the CPU too): the logits an nnU-Net model's own predictor paints from (half the aggregation
    memory, up to ~0.5 of a logit off the float32 sum where only faint Gaussian tails cover a
    voxel). ``progress(done, total)`` is called after each window.
    """
    if aggregation not in ("float32", "float16"):
        raise InferenceError(f"aggregation must be float32 or float16, got {aggregation!r}")
    dtype = np.float16 if aggregation == "float16" else np.float32
    patch = tuple(int(p) for p in patch_size)
    padded, revert = pad_to_patch(np.asarray(data, dtype=np.float32), patch)
    shape = padded.shape[1:]
    steps = compute_steps_for_sliding_window(shape, patch, tile_step)
    slicers = [tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))
               for start in itertools.product(*steps)]
    gaussian = compute_gaussian(patch) if use_gaussian else np.ones(patch, dtype=np.float32)
    logits = np.zeros((num_classes, *shape), dtype=dtype)
    weights = np.zeros(shape, dtype=dtype)
    flips = [c for r in range(1, len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
    for n, sl in enumerate(slicers, start=1):
        window = np.ascontiguousarray(padded[(slice(None), *sl)])[None]
        pred = _predict(predictor, window, num_classes, patch)
        for axes in flips:
            spatial = tuple(a + 2 for a in axes)
            flipped = np.ascontiguousarray(np.flip(window, spatial))
            pred += np.flip(_predict(predictor, flipped, num_classes, patch), tuple(a + 1 for a in axes))
        if flips:
            pred /= np.float32(len(flips) + 1)
        pred *= gaussian
        target = logits[(slice(None), *sl)]
        np.add(target, pred, out=target, casting="unsafe")  # float16: float32 sum, rounded once
        np.add(weights[sl], gaussian, out=weights[sl], casting="unsafe")
        if progress is not None:
            progress(n, len(slicers))
    del padded
    np.divide(logits, weights, out=logits)
    if logits.dtype != np.float32:
        logits = logits.astype(np.float32)
    if not np.isfinite(logits).all():
        raise InferenceError("network output must be finite, got NaN or infinite logits")
    if any(s != slice(None) for s in revert[1:]):
        logits = np.ascontiguousarray(logits[revert])
    return logits


def _predict(predictor: Predictor, window: np.ndarray, k: int, patch: tuple[int, ...]) -> np.ndarray:
    out = np.asarray(predictor(window))
    if out.shape != (1, k, *patch):
        raise InferenceError(f"network output must have shape {(1, k, *patch)}, got {out.shape}")
    return out[0].astype(np.float32, copy=True)
