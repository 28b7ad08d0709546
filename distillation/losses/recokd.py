"""The two terms of the public ReCo-KD code that this project's recipe lacks, in their public form.

Read from ``nnunetv2/training/distillation/methods/reco.py`` of github.com/ClinicaAlpha/DPRD-3D-MedSeg
("ported from Trainer_ReCo_KD"; docs/kd-recipes.md has the line references):

* :func:`attention_l1_loss` (the public ``mask_loss``): per stage, L1 between the student's
  (adapter-projected) and the teacher's channel attention plus L1 between their spatial attention
  (:func:`~distillation.losses.feature_maps.attention_maps`), each a mean over its elements.
* :class:`GlobalContextBlock` and :func:`gc_context_loss` (the public ``rela_loss``): a GCNet-style
  block per side, ``f + mlp(Σ_x f · softmax_x(conv(f)))``, and the MSE between the student's and the
  teacher's block outputs. The MLP's last convolution starts at zero, so while the block is not
  trained (the public code never gives it to the optimizer) the term is the dense feature MSE
  ``mean (projected - teacher)²``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distillation.losses.feature_maps import attention_maps, select_stages, stage_weights

__all__ = ["attention_l1_loss", "GlobalContextBlock", "gc_context_loss"]


def attention_l1_loss(projected_student: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor], *,
                      form: str = "softmax", temperature: float = 0.5, stage_decay: float = 0.5,
                      stages: Sequence[int] = (), bottleneck: bool = True) -> torch.Tensor:
    """Σ_stages w_s · (L1(channel attention) + L1(spatial attention)), student vs teacher."""
    idx = select_stages(len(teacher_features), stages, bottleneck)
    total = teacher_features[0].new_zeros((), dtype=torch.float32)
    for w, s in zip(stage_weights(len(idx), stage_decay), idx, strict=True):
        sp_s, ch_s = attention_maps(projected_student[s].float(), form, temperature)
        sp_t, ch_t = attention_maps(teacher_features[s].detach().float(), form, temperature)
        total = total + w * (F.l1_loss(ch_s, ch_t) + F.l1_loss(sp_s, sp_t))
    return total


def _context_mlp(channels: int) -> nn.Sequential:
    hidden = max(1, channels // 2)
    mlp = nn.Sequential(nn.Conv3d(channels, hidden, kernel_size=1), nn.GroupNorm(1, hidden),
                        nn.ReLU(inplace=True), nn.Conv3d(hidden, channels, kernel_size=1))
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


class GlobalContextBlock(nn.Module):
    """One stage's student and teacher context blocks (teacher width), initialised as the public
    code does: attention-pooling convs Kaiming-normal (fan in), the MLP's last conv zero."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mask_s = nn.Conv3d(channels, 1, kernel_size=1)
        self.mask_t = nn.Conv3d(channels, 1, kernel_size=1)
        for conv in (self.mask_s, self.mask_t):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        self.add_s = _context_mlp(channels)
        self.add_t = _context_mlp(channels)

    @staticmethod
    def _pool(f: torch.Tensor, mask_conv: nn.Conv3d) -> torch.Tensor:
        attn = torch.softmax(mask_conv(f).flatten(2), dim=-1)  # (B, 1, N) over positions
        context = (f.flatten(2) * attn).sum(-1)  # (B, C)
        return context.view(*context.shape, *([1] * (f.ndim - 2)))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_s = student + self.add_s(self._pool(student, self.mask_s))
        out_t = teacher + self.add_t(self._pool(teacher, self.mask_t))
        return out_s, out_t


def gc_context_loss(projected_student: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor],
                    blocks: Sequence[GlobalContextBlock], *, stage_decay: float = 0.5,
                    stages: Sequence[int] = (), bottleneck: bool = True) -> torch.Tensor:
    """Σ_stages w_s · MSE(student block output, teacher block output) (``blocks`` one per stage)."""
    idx = select_stages(len(teacher_features), stages, bottleneck)
    total = teacher_features[0].new_zeros((), dtype=torch.float32)
    for w, s in zip(stage_weights(len(idx), stage_decay), idx, strict=True):
        out_s, out_t = blocks[s](projected_student[s].float(), teacher_features[s].detach().float())
        total = total + w * F.mse_loss(out_s, out_t)
    return total
