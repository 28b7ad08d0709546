"""The parity self-check a backend passes on load before it runs a model.

One fixed window (smooth random blobs plus a little noise, seeded, z-score-like values, the
card's patch size) goes through the candidate and through the reference, ONNX Runtime on
the same file (fp32 for a float file). The candidate passes when

* the argmax of its logits agrees with the reference's on at least ``min_agreement`` of the
  voxels where the reference is decisive (its top two logits further apart than the allowed
  error: near-ties, common in untrained networks, may flip at any precision), and
* the 99.9th percentile of its absolute logit differences is at most ``max_error`` times the
  largest absolute reference logit (a percentile, not the maximum: int8 implementations differ by
  a quantization step on a handful of voxels, which says nothing about the rest).

Tolerances per precision (``TOLERANCES``):

* fp32 0.999 / 5e-3: two fp32 implementations differ by summation order and convolution
  algorithm only (the shipped student, OpenVINO against ONNX Runtime: 1.0 / 2.2e-6);
* bf16 0.99 / 0.05: bf16 keeps 8 mantissa bits, ~0.4 % per product (shipped student: 1.0 / 5.0e-3);
* int8 0.98 / 0.5: two int8 implementations round activations differently (OpenVINO against
  ONNX Runtime on two QDQ files of the shipped student: 1.0 / 0.14 and 1.0 / 0.18; a random
  width-1 network's largest single difference was 0.52); the agreement is what counts here.

A model's real accuracy at a reduced precision is the card's evidence
(``validated_precisions``, Dice on held-out cases); this check only catches a backend that
computes something else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pacsnode.inference.preprocessing import linear_resize

__all__ = ["TOLERANCES", "Parity", "fixed_window", "compare"]

TOLERANCES = {"fp32": (0.999, 5e-3), "bf16": (0.99, 0.05), "int8": (0.98, 0.5)}


@dataclass(frozen=True)
class Parity:
    """How a candidate's logits compare with the reference's on the fixed window."""

    precision: str
    argmax_agreement: float  # over the voxels where the reference is decisive
    max_error: float  # 99.9th percentile of |candidate - reference| / max |reference|
    min_agreement: float
    max_allowed: float

    @property
    def passed(self) -> bool:
        return self.argmax_agreement >= self.min_agreement and self.max_error <= self.max_allowed

    def describe(self) -> str:
        return (f"argmax agreement {self.argmax_agreement:.5f} (needs >= {self.min_agreement:g}), "
                f"logit error (99.9th percentile) {self.max_error:.2e} of the largest logit "
                f"(needs <= {self.max_allowed:g})")


def fixed_window(channels: int, patch: Sequence[int], seed: int = 22) -> np.ndarray:
    """The check's input (1, C, *patch) float32: blobs ~8 voxels wide, unit variance, plus noise."""
    rng = np.random.default_rng(seed)
    patch = tuple(int(p) for p in patch)
    coarse = tuple(max(2, p // 8) for p in patch)
    out = np.empty((1, channels, *patch), dtype=np.float32)
    for c in range(channels):
        linear_resize(rng.standard_normal(coarse).astype(np.float32), patch, out[0, c])
        out[0, c] /= max(float(out[0, c].std()), 1e-6)
        out[0, c] += 0.1 * rng.standard_normal(patch).astype(np.float32)
    return out


def compare(candidate: np.ndarray, reference: np.ndarray, precision: str, activation: str = "softmax") -> Parity:
    """The parity of ``candidate`` logits (1, K, ...) against ``reference`` at ``precision``
    (for sigmoid regions the agreement is that of each region's sign)."""
    min_agreement, max_allowed = TOLERANCES[precision]
    cand = np.asarray(candidate, dtype=np.float32)
    ref = np.asarray(reference, dtype=np.float32)
    if cand.shape != ref.shape:
        return Parity(precision, 0.0, float("inf"), min_agreement, max_allowed)
    scale = max(float(np.abs(ref).max()), 1e-6)
    band = max_allowed * scale
    if activation == "sigmoid" or ref.shape[1] == 1:  # regions: the sign is the label
        same, decisive = (cand > 0) == (ref > 0), np.abs(ref) > band
    else:
        top2 = np.partition(ref, ref.shape[1] - 2, axis=1)[:, -2:]
        same, decisive = cand.argmax(1) == ref.argmax(1), (top2[:, 1] - top2[:, 0]) > band
    agreement = float(same[decisive].mean()) if decisive.any() else 1.0
    diff = np.abs(cand - ref).ravel()
    k = min(diff.size - 1, int(np.ceil(0.999 * (diff.size - 1))))
    error = float(np.partition(diff, k)[k]) / scale
    if not np.isfinite(error):
        error = float("inf")
    return Parity(precision, agreement, error, min_agreement, max_allowed)
