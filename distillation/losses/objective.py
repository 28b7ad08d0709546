"""The training objective: segmentation loss plus the switched-on KD terms, as named parts.

One object serves teacher training (no teacher, no KD) and distillation. It returns the total
and a dict of detached per-term values for logging (``seg``, ``logit``, ``sard``, ``ca``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distillation.losses.kd import ContextLoss, KDConfig, LogitKDLoss, SARDLoss
from distillation.losses.segmentation import DeepSupervisionLoss, DiceCELoss

__all__ = ["Objective"]


def _full_res(outputs: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    return outputs if isinstance(outputs, torch.Tensor) else outputs[0]


class Objective(nn.Module):
    """``seg + Σ weight_i · KD_i``; holds no trainable parameters (the adapters are in KDHeads)."""

    def __init__(self, num_classes: int, kd: KDConfig | None = None, batch_dice: bool = False,
                 ddp: bool = False) -> None:
        super().__init__()
        self.kd = kd or KDConfig()
        self.num_classes = num_classes
        self.seg = DeepSupervisionLoss(DiceCELoss(batch_dice=batch_dice), ddp=ddp)
        self.logit = LogitKDLoss(self.kd.temperature, self.kd.logit_class_balanced)
        self.sard = SARDLoss(num_classes, self.kd.sard_fg_weight, self.kd.sard_bg_weight,
                             self.kd.stage_decay, self.kd.stages)
        self.ca = ContextLoss(self.kd.ca_affinity, self.kd.ca_global, self.kd.ca_grid,
                              self.kd.stage_decay, self.kd.stages) if self.kd.ca else None

    def forward(
        self,
        outputs: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        *,
        projected: Sequence[torch.Tensor] | None = None,
        teacher_outputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
        teacher_features: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total = self.seg(outputs, target)
        parts = {"seg": float(total.detach())}
        kd = self.kd
        if kd.logit:
            if teacher_outputs is None:
                raise ValueError("logit KD is on but no teacher outputs were given")
            term = self.logit(_full_res(outputs), _full_res(teacher_outputs), target)
            total = total + kd.logit_weight * term
            parts["logit"] = float(term.detach())
        if kd.sard or kd.ca:
            if teacher_features is None or projected is None:
                raise ValueError("feature KD (sard, ca) is on but teacher features or projected "
                                 "student features are missing")
        if kd.sard:
            term = self.sard(projected, teacher_features, target)
            total = total + kd.sard_weight * term
            parts["sard"] = float(term.detach())
        if self.ca is not None:
            term = self.ca(projected, teacher_features)
            total = total + kd.ca_weight * term
            parts["ca"] = float(term.detach())
        parts["total"] = float(total.detach())
        return total, parts
