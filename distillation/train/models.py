"""The model pair: a trainable student (with its KD heads in one module) and an optional frozen teacher."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distillation.losses.kd import KDHeads

__all__ = ["StudentWithHeads", "ModelPair", "freeze"]


class StudentWithHeads(nn.Module):
    """The student and its KD adapters as one module, so one optimizer and one DDP wrapper
    cover both. ``forward`` returns ``(outputs, encoder_features, projected_features)``;
    without heads the last two are ``None``. Only ``student`` is ever checkpointed as the
    network or exported.
    """

    def __init__(self, student: nn.Module, heads: KDHeads | None = None) -> None:
        super().__init__()
        self.student = student
        self.heads = heads

    def forward(self, x: torch.Tensor) -> tuple[Any, list[torch.Tensor] | None, list[torch.Tensor] | None]:
        if self.heads is None:
            return self.student(x), None, None
        outputs, skips = self.student.forward_with_features(x)
        return outputs, skips, self.heads(skips)


def freeze(teacher: nn.Module) -> nn.Module:
    """Eval mode, no gradients: the teacher is a fixed function during distillation."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@dataclass
class ModelPair:
    """What the loop trains (``model``) and what it distils from (``teacher``, frozen, or None)."""

    model: StudentWithHeads
    teacher: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.teacher is not None:
            freeze(self.teacher)

    @property
    def feature_channels(self) -> Sequence[int]:
        return list(self.model.student.features_per_stage)
