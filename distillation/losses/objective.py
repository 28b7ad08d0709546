"""The training objective: segmentation loss plus the switched-on KD terms, as named parts.

One object serves teacher training (no teacher, no KD) and distillation. It returns the total
and a dict of detached per-term values for logging (``seg``, ``logit``, ``sard``, ``ca``, ``attn``,
and ``kd_scale`` while a warm-up is configured). :meth:`Objective.set_epoch` sets the warm-up
factor on every KD weight (:meth:`KDConfig.scale_at`).

A sample whose target is :data:`UNLABELLED` (-1) everywhere has no label (label-free
distillation, docs/label-free.md): the seg term is averaged over the labelled samples only and
left out (no ``seg`` part) when there are none; the KD terms that weigh by class read the
teacher's prediction in place of the missing label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distillation.losses.kd import ContextLoss, KDConfig, KDHeads, LogitKDLoss, SARDLoss
from distillation.losses.recokd import attention_l1_loss, gc_context_loss
from distillation.losses.segmentation import DeepSupervisionLoss, DiceCELoss

__all__ = ["Objective", "UNLABELLED"]

UNLABELLED = -1  # the target value of a sample without a label


def _full_res(outputs: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    return outputs if isinstance(outputs, torch.Tensor) else outputs[0]


class Objective(nn.Module):
    """``seg + scale · Σ weight_i · KD_i``; holds no trainable parameters (the adapters and the
    context blocks of ``ca_form = "gc"`` are in KDHeads, passed as ``heads``)."""

    def __init__(self, num_classes: int, kd: KDConfig | None = None, batch_dice: bool = False,
                 ddp: bool = False, heads: KDHeads | None = None) -> None:
        super().__init__()
        self.kd = kd = kd or KDConfig()
        self.num_classes = num_classes
        self.scale = 1.0
        self.seg = DeepSupervisionLoss(DiceCELoss(batch_dice=batch_dice), ddp=ddp)
        self.logit = LogitKDLoss(kd.temperature, kd.logit_class_balanced)
        self.where = {"stage_decay": kd.stage_decay, "stages": kd.stages, "bottleneck": kd.bottleneck}
        self.sard = SARDLoss(num_classes, kd.sard_fg_weight, kd.sard_bg_weight, kd.stage_decay, kd.stages,
                             bottleneck=kd.bottleneck, attention=kd.attention,
                             temperature=kd.attention_temperature, error=kd.sard_error,
                             reduction=kd.sard_reduction)
        self.ca = ContextLoss(kd.ca_affinity, kd.ca_global, kd.ca_grid, **self.where) \
            if kd.ca and kd.ca_form == "affinity" else None
        self._context = None  # not a submodule: the blocks train (or not) with the student's heads
        if kd.ca and kd.ca_form == "gc":
            if heads is None or heads.context is None:
                raise ValueError("ca_form = 'gc' needs KDHeads built with context=True, got none")
            self._context = list(heads.context)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Set the warm-up factor for ``epoch`` (0-based) of ``epochs``."""
        self.scale = self.kd.scale_at(epoch, epochs)

    def forward(
        self,
        outputs: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        *,
        projected: Sequence[torch.Tensor] | None = None,
        teacher_outputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
        teacher_features: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        labelled = (target.flatten(1) != UNLABELLED).any(1)  # (B,): a sample without a label is all -1
        if bool(labelled.all()):
            total = self.seg(outputs, target)
            parts = {"seg": float(total.detach())}
        else:
            total, parts = self._seg_of_labelled(outputs, target, labelled)
            if teacher_outputs is not None:  # class weighting of the unlabelled samples: the teacher's argmax
                guess = _full_res(teacher_outputs).argmax(1).to(target.dtype)
                guess = guess[:, None] if target.ndim == guess.ndim + 1 else guess
                target = torch.where(labelled.view(-1, *[1] * (target.ndim - 1)), target, guess)
        kd, scale = self.kd, self.scale
        if kd.warmup_fraction > 0:
            parts["kd_scale"] = scale
        if kd.logit:
            if teacher_outputs is None:
                raise ValueError("logit KD is on but no teacher outputs were given")
            term = self.logit(_full_res(outputs), _full_res(teacher_outputs), target)
            total = total + scale * kd.logit_weight * term
            parts["logit"] = float(term.detach())
        if kd.needs_features and (teacher_features is None or projected is None):
            raise ValueError("feature KD (sard, ca, attention_l1) is on but teacher features or projected "
                             "student features are missing")
        if kd.sard:
            term = self.sard(projected, teacher_features, target)
            total = total + scale * kd.sard_weight * term
            parts["sard"] = float(term.detach())
        if kd.ca:
            if self._context is not None:
                term = gc_context_loss(projected, teacher_features, self._context, **self.where)
            else:
                term = self.ca(projected, teacher_features)
            total = total + scale * kd.ca_weight * term
            parts["ca"] = float(term.detach())
        if kd.attention_l1:
            term = attention_l1_loss(projected, teacher_features, form=kd.attention,
                                     temperature=kd.attention_temperature, **self.where)
            total = total + scale * kd.attention_l1_weight * term
            parts["attn"] = float(term.detach())
        parts["total"] = float(total.detach())
        return total, parts

    def _seg_of_labelled(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor,
                         labelled: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        outs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        # every output stays in the graph (0 x it): DDP needs each parameter's gradient every step
        total = sum((o.float().sum() * 0.0 for o in outs), outs[0].new_zeros((), dtype=torch.float32))
        if not bool(labelled.any()):
            return total, {}
        picked = outputs[labelled] if isinstance(outputs, torch.Tensor) else [o[labelled] for o in outs]
        seg = self.seg(picked, target[labelled])
        return total + seg, {"seg": float(seg.detach())}
