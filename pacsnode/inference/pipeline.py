"""Run a model on volumes: align channels, preprocess, sliding window, back to the source grid.

The result is a uint8 label map on the reference (first) volume's grid. Memory stays
bounded: aggregation is float32 on the preprocessed grid, and the way back streams one
class at a time (running max + argmax), never holding all classes on the source grid
unless probabilities are asked for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pacsnode.errors import InferenceError
from pacsnode.inference.cascade import previous_stage_channels
from pacsnode.inference.model import Model
from pacsnode.inference.postprocessing import keep_largest_component
from pacsnode.inference.preprocessing import (
    Preprocessed,
    determine_separate_z,
    linear_resize,
    plan_from_card,
    preprocess,
    resample_image,
    revert_to_source,
)
from pacsnode.inference.sliding_window import predict_sliding_window
from pacsnode.volume import Volume, resample_to_reference

__all__ = ["Prediction", "run", "logits_to_labels", "network_input"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Prediction:
    """``labels`` uint8 [k, i, j] on ``reference``'s grid; ``probabilities`` float32 [K, k, i, j] if asked."""

    labels: np.ndarray
    reference: Volume
    probabilities: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    windows: int = 0

    @property
    def affine(self) -> np.ndarray:
        return self.reference.affine


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._t
        self._t = now


_SLAB = 16  # output slices resampled at a time on the way back


def _linear_slab(src: np.ndarray, out_shape: tuple[int, ...], z0: int, out: np.ndarray) -> None:
    """Rows z0:z0+len(out) of the order-1 grid-aligned resize of ``src`` to ``out_shape``."""
    linear_resize(src, out_shape, out, start=z0)


def logits_to_labels(logits: np.ndarray, pre: Preprocessed, activation: str,
                     label_values: Sequence[int]) -> np.ndarray:
    """uint8 labels on the full source grid from logits at the target spacing, one class at a time.

    Without a separate low-resolution axis the way back runs in slabs of output slices, so
    only a few slices per class are ever held on the source grid.
    """
    labels = np.zeros(pre.shape_before_crop, dtype=np.uint8)
    sl = tuple(slice(lo, hi) for lo, hi in pre.bbox)
    axis = determine_separate_z(pre.target_spacing, pre.spacing)
    inner = labels[sl]
    shape = pre.shape_after_crop
    if axis is None and tuple(logits.shape[1:]) != tuple(shape):
        for z0 in range(0, shape[0], _SLAB):
            n = min(_SLAB, shape[0] - z0)
            part = inner[z0:z0 + n]
            buf = np.empty((n, *shape[1:]), dtype=np.float32)
            if activation == "softmax":
                best = np.empty_like(buf)
                _linear_slab(logits[0], shape, z0, best)
                for c in range(1, logits.shape[0]):
                    _linear_slab(logits[c], shape, z0, buf)
                    better = buf > best
                    np.copyto(best, buf, where=better)
                    part[better] = c
            else:
                for c, value in enumerate(label_values):
                    _linear_slab(logits[c], shape, z0, buf)
                    part[buf > 0] = value
        return labels
    buf = np.empty(shape, dtype=np.float32)
    if activation == "softmax":
        best = np.empty(shape, dtype=np.float32)
        resample_image(logits[0], shape, axis=axis, order=1, order_z=0, out=best)
        for c in range(1, logits.shape[0]):
            resample_image(logits[c], shape, axis=axis, order=1, order_z=0, out=buf)
            better = buf > best
            np.copyto(best, buf, where=better)
            inner[better] = c
    else:  # sigmoid regions, in card order: later regions overwrite earlier ones
        for c, value in enumerate(label_values):
            resample_image(logits[c], shape, axis=axis, order=1, order_z=0, out=buf)
            inner[buf > 0] = value  # sigmoid(x) > 0.5
    return labels


def _probabilities(logits: np.ndarray, pre: Preprocessed, activation: str) -> np.ndarray:
    k = logits.shape[0]
    fill = [0.0] + [-1e4] * (k - 1) if activation == "softmax" else [-1e4] * k
    out = revert_to_source(logits, pre, order=1, order_z=0, fill=fill)
    if activation == "softmax":
        out -= out.max(axis=0, keepdims=True)
        np.exp(out, out=out)
        out /= out.sum(axis=0, keepdims=True)
    else:
        np.negative(out, out=out)
        np.exp(out, out=out)
        out += 1
        np.reciprocal(out, out=out)
    return out


def run(
    model: Model,
    volumes: Sequence[Volume],
    *,
    return_probabilities: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Prediction:
    """Segment ``volumes`` (one per card input, in card order) with ``model``.

    Channels after the first are resampled into the first volume's grid (patient
    coordinates; they must share its FrameOfReferenceUID). ``timings`` holds seconds for
    align, preprocess, network, resample_back and postprocess (a cascade: also stage1 and the first
    stage's own steps as stage1_*).
    """
    card = model.card
    if len(volumes) != card.channels:
        raise InferenceError(
            f"model {card.name} needs one volume per input channel ({', '.join(card.channel_names)}), "
            f"got {len(volumes)}"
        )
    clock = _Clock()
    reference = volumes[0]
    aligned = [reference] + [resample_to_reference(v, reference) for v in volumes[1:]]
    images = [v.array for v in aligned]  # one array per channel: preprocess crops each, no stacked copy
    del aligned
    clock.lap("align")
    held = [images]  # handed over, so the stacked images are freed before the sliding window
    del images
    labels, probabilities, windows = _run_images(model, held, reference.spacing, return_probabilities, progress,
                                                 clock)
    return Prediction(labels=labels, reference=reference, probabilities=probabilities,
                      timings=clock.timings, windows=windows)


def network_input(model: Model, images: np.ndarray, spacing: Sequence[float], pre: Preprocessed,
                  timings: dict[str, float] | None = None) -> np.ndarray:
    """The network's input on ``pre``'s grid: the preprocessed images, then for a cascade the first stage's
    labels one-hot (:mod:`pacsnode.inference.cascade`), the first stage run here on the same ``images``."""
    stage = model.card.previous_stage
    if stage is None:
        return pre.data
    if model.previous is None:
        raise InferenceError(f"model {model.card.name} is a cascade's second stage: load it with Model.load, "
                             f"which loads its first stage {stage.model}")
    clock = _Clock()
    first, _, _ = _run_images(model.previous, [images], spacing, False, None, clock)
    if timings is not None:
        for k, v in clock.timings.items():
            timings[f"stage1_{k}"] = v
    extra = previous_stage_channels(first, images, pre, stage.labels)
    return np.concatenate([pre.data, extra])


def _run_images(model: Model, held: list[np.ndarray], spacing: Sequence[float], return_probabilities: bool,
                progress: Callable[[int, int], None] | None, clock: _Clock
                ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(labels, probabilities or None, windows) on the source grid of the images (C, z, y, x) in ``held``
    (taken out of it, so the caller's list no longer keeps them alive)."""
    card = model.card
    images = held.pop()
    plan = replace(plan_from_card(card), target_spacing=card.spacing_for(spacing))
    pre = preprocess(images, spacing, plan)
    if card.previous_stage is not None:
        clock.lap("preprocess")
        pre = replace(pre, data=network_input(model, images, spacing, pre, clock.timings))
        clock.lap("stage1")
    del images
    clock.lap("preprocess")
    log.info("model %s: source %s at %s mm, network grid %s at %s mm", card.name, pre.shape_before_crop,
             tuple(round(s, 3) for s in pre.spacing), pre.data.shape[1:], card.target_spacing)
    n_windows = [0]

    def _progress(done: int, total: int) -> None:
        n_windows[0] = total
        if progress is not None:
            progress(done, total)

    logits = predict_sliding_window(pre.data, model.predict, card.num_outputs, card.patch_size,
                                    tile_step=card.tile_step, mirror_axes=card.mirror_axes,
                                    aggregation=card.aggregation, progress=_progress)
    pre = Preprocessed(data=np.empty((0,)), seg=None, bbox=pre.bbox, shape_before_crop=pre.shape_before_crop,
                       shape_after_crop=pre.shape_after_crop, spacing=pre.spacing,
                       target_spacing=pre.target_spacing)  # drop the network input
    clock.lap("network")
    values = [lab.value for lab in card.labels]
    probabilities = None
    if return_probabilities:
        probabilities = _probabilities(logits, pre, card.activation)
        del logits
        if card.activation == "softmax":
            labels = probabilities.argmax(axis=0).astype(np.uint8)
        else:
            labels = np.zeros(pre.shape_before_crop, dtype=np.uint8)
            for c, value in enumerate(values):
                labels[probabilities[c] > 0.5] = value
    else:
        labels = logits_to_labels(logits, pre, card.activation, values)
        del logits
    clock.lap("resample_back")
    if card.postprocessing.largest_component:
        keep_largest_component(labels, card.postprocessing.largest_component)
    clock.lap("postprocess")
    return labels, probabilities, n_windows[0]
