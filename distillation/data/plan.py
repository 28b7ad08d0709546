"""The data plan: how raw cases become network input (target spacing, normalization, patch).

Built from the dataset as nnU-Net's planner does the parts the node needs: target spacing =
median spacing over cases; normalization per channel from ``channel_names``: ``"CT"`` → the
``ct`` scheme (clip to the 0.5 / 99.5 percentiles of foreground voxels, then mean / std of the
clipped foreground), anything else → ``zscore`` over the nonzero mask. The plan is stored with
the preprocessed cache as ``plan.json`` and its fields feed the model card unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DataPlan", "make_plan", "ct_normalization", "plan_from_card"]


@dataclass(frozen=True)
class DataPlan:
    """Preprocessing that training and deployment share (model-card field names)."""

    channel_names: tuple[str, ...]
    labels: Mapping[str, int]
    target_spacing: tuple[float, float, float]
    normalization: tuple[Mapping[str, Any], ...]
    patch_size: tuple[int, int, int]
    crop_to_nonzero: bool = True

    @property
    def num_classes(self) -> int:
        return max(int(v) for v in self.labels.values()) + 1

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = dict(self.labels)
        d["normalization"] = [dict(n) for n in self.normalization]
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> DataPlan:
        return cls(
            channel_names=tuple(d["channel_names"]),
            labels={str(k): int(v) for k, v in d["labels"].items()},
            target_spacing=tuple(float(x) for x in d["target_spacing"]),  # type: ignore[arg-type]
            normalization=tuple(dict(n) for n in d["normalization"]),
            patch_size=tuple(int(x) for x in d["patch_size"]),  # type: ignore[arg-type]
            crop_to_nonzero=bool(d.get("crop_to_nonzero", True)),
        )

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> DataPlan:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


def ct_normalization(values: np.ndarray) -> dict[str, Any]:
    """nnU-Net's CT scheme from foreground intensities: percentiles 0.5 / 99.5, then mean / std."""
    if values.size == 0:
        raise ValueError("CT normalization needs foreground voxels, got none")
    lo, hi = (float(x) for x in np.percentile(values, [0.5, 99.5]))
    clipped = np.clip(values, lo, hi)
    return {"scheme": "ct", "clip": [lo, hi], "mean": float(clipped.mean()),
            "std": float(max(clipped.std(), 1e-8))}


def make_plan(channel_names: Sequence[str], labels: Mapping[str, int],
              spacings: Sequence[Sequence[float]], patch_size: Sequence[int],
              foreground: Sequence[np.ndarray] | None = None) -> DataPlan:
    """Plan from per-case spacings (z, y, x) and, for CT channels, foreground intensity samples.

    ``foreground[c]`` holds sampled foreground intensities of channel ``c`` over the training set
    (only needed when a channel is named ``CT``).
    """
    if not spacings:
        raise ValueError("a plan needs at least one case spacing, got none")
    target = tuple(float(x) for x in np.median(np.asarray(spacings, dtype=float), axis=0))
    norms: list[dict[str, Any]] = []
    for c, name in enumerate(channel_names):
        if name.upper() == "CT":
            if foreground is None:
                raise ValueError(f"channel {c} is CT: its normalization needs foreground intensities")
            norms.append(ct_normalization(np.asarray(foreground[c])))
        else:
            norms.append({"scheme": "zscore", "use_nonzero_mask": True})
    return DataPlan(tuple(channel_names), dict(labels), target, tuple(norms),  # type: ignore[arg-type]
                    tuple(int(p) for p in patch_size))  # type: ignore[arg-type]


def plan_from_card(card: Mapping[str, Any]) -> DataPlan:
    """The plan a model card describes (an imported nnU-Net teacher carries a card, not a plan):
    channels, softmax labels, spacing, normalization, patch and crop as the node would run it."""
    from pacsnode.errors import ConfigError

    spacing = card.get("target_spacing") or []
    if card.get("activation", "softmax") != "softmax" or len(spacing) != 3 or None in spacing:
        raise ConfigError("a teacher without a data plan needs a 3-D softmax model card to plan from, got "
                          f"activation {card.get('activation')!r} and target_spacing {spacing!r}")
    labels = {"background": 0, **{str(lab["name"]): int(lab["value"]) for lab in card.get("labels") or []}}
    return DataPlan(tuple(str(c["name"]) for c in card["inputs"]), labels,
                    tuple(float(x) for x in spacing),  # type: ignore[arg-type]
                    tuple(dict(n) for n in card["normalization"]),
                    tuple(int(x) for x in card["patch_size"]),  # type: ignore[arg-type]
                    bool(card.get("crop_to_nonzero", True)))
