"""What a model card says beyond one 3-D network: a 2-D model run slice by slice, and a two-stage cascade.

**2-D models** (nnU-Net's ``2d`` configuration) are windows of depth 1: ``patch_size`` holds 1 on the
slice axis and ``target_spacing`` holds ``null`` there, meaning the source's own spacing between slices
(nnU-Net's preprocessing resamples a 2-D configuration in-plane only). The sliding window then visits
every slice once (:func:`pacsnode.inference.sliding_window.compute_steps_for_sliding_window`) and its
Gaussian is the in-plane one, as ``nnUNetPredictor`` runs a 2-D network over the slices.

**Cascades** (nnU-Net's ``3d_cascade_fullres``): the card of the second stage names the first stage's
ONNX file beside it in ``previous_stage``::

    "previous_stage": {"model": "NAME.stage1.onnx", "sha256": "...", "labels": [1, 2, 3]}

The node runs the first stage to a label map on the source grid, resamples it to the second stage's grid
as nnU-Net resamples a segmentation, and feeds ``labels`` one-hot as extra input channels after the
card's ``inputs`` (:mod:`pacsnode.inference.cascade`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pacsnode.errors import ModelError

__all__ = ["parse_target_spacing", "slice_axis", "PreviousStage"]

_WHAT = "three positive numbers in mm (z, y, x); null on the slice axis of a 2-D model (patch 1 there)"


def _err(path: str, rule: str, value: Any, valid: str) -> ModelError:
    shown = json.dumps(value) if not isinstance(value, str) else repr(value)
    return ModelError(f"model card field {path} {rule}, got {shown[:77] + '...' if len(shown) > 80 else shown}; "
                      f"valid: {valid}")


def parse_target_spacing(v: Any, patch: Sequence[int]) -> tuple[float | None, ...]:
    """The card's ``target_spacing``: three positive numbers, or ``null`` on one axis where the patch is 1."""
    if not isinstance(v, list) or len(v) != 3:
        raise _err("target_spacing", "must be a list of three values", v, _WHAT)
    out: list[float | None] = []
    for axis, x in enumerate(v):
        if x is None:
            if patch[axis] != 1 or any(o is None for o in out):
                raise _err("target_spacing", f"may be null on one axis only, where patch_size ({list(patch)}) "
                           "is 1 (a 2-D model's slice axis)", v, _WHAT)
            out.append(None)
            continue
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0:
            raise _err("target_spacing", "must hold positive numbers", v, _WHAT)
        out.append(float(x))
    return tuple(out)


def slice_axis(target_spacing: Sequence[float | None]) -> int | None:
    """The axis a 2-D model runs along (its target spacing is the source's), or None for a 3-D model."""
    return next((a for a, s in enumerate(target_spacing) if s is None), None)


def resolve_spacing(target_spacing: Sequence[float | None], source: Sequence[float]) -> tuple[float, float, float]:
    """The target spacing for a volume at ``source`` spacing: the source's own on a 2-D model's slice axis."""
    return tuple(float(s) if t is None else float(t) for t, s in zip(target_spacing, source, strict=True))  # type: ignore[return-value]


@dataclass(frozen=True)
class PreviousStage:
    """The first stage of a cascade: its ONNX file (beside this one), sha256, and the label values fed
    one-hot, in channel order, after the card's inputs."""

    model: str
    sha256: str
    labels: tuple[int, ...]

    @classmethod
    def from_dict(cls, d: Any) -> PreviousStage:
        valid = '{"model": "FILE.onnx", "sha256": "<64 hex digits>", "labels": [1, 2, ...]}'
        if not isinstance(d, Mapping) or set(d) != {"model", "sha256", "labels"}:
            raise _err("previous_stage", "must have exactly model, sha256 and labels", d, valid)
        model, digest, labels = d["model"], d["sha256"], d["labels"]
        if not isinstance(model, str) or not model.endswith(".onnx") or "/" in model or "\\" in model:
            raise _err("previous_stage.model", "must be an .onnx file name beside the model", model, valid)
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise _err("previous_stage.sha256", "must be 64 lowercase hex digits", digest, "the first stage's sha256")
        if (not isinstance(labels, list) or not labels or len(set(labels)) != len(labels)
                or not all(isinstance(x, int) and not isinstance(x, bool) and 0 < x < 256 for x in labels)):
            raise _err("previous_stage.labels", "must list distinct label values 1-255", labels, valid)
        return cls(model, digest, tuple(labels))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "sha256": self.sha256, "labels": list(self.labels)}
