"""Knowledge-distillation terms: logit KD, MS-SARD and MS-CA, and the trainable heads they need.

Shapes: logits (B, K, *spatial); encoder features per stage (B, C_s, *spatial_s), highest
resolution first (what ``net.forward_with_features`` returns); labels (B, *spatial) or
(B, 1, *spatial) at the input resolution. Teacher tensors are always detached here.

* :func:`logit_kd_loss`: ``T² · mean_voxels KL(softmax(t/T) || softmax(s/T))`` (sum over classes,
  mean over batch and voxels, never over classes). Given the labels it is class-balanced instead:
  the KL is averaged within each class present in a sample (:func:`class_balanced_masks`), then
  over those classes, so a lesion of a few hundred voxels weighs as much as the background, as in
  the Dice term; the plain voxel mean lets the background's millions of voxels drown the small
  classes (a width-1/4 student learned enhancing tumor later with it than without KD).
* :func:`sard_loss` (multi-scale, size-normalized, region-aware feature distillation): per stage,
  the adapter-projected student features against the teacher's, squared error (relative to the
  teacher's mean square at that stage, so stages of any scale compare) weighted by
  :func:`class_balanced_masks` (each present class sums to 1), the teacher's spatial attention
  (mean |f| over channels, mean 1) and channel attention (softmax of pooled |f|, mean 1), with
  separate foreground and background terms; stages weighted ``stage_decay**s``, normalized.
* :func:`context_affinity_loss` (MS-CA): per stage, MSE between the cosine-affinity matrices of
  features average-pooled to at most ``grid³`` positions (never an N×N over full resolution),
  and/or :func:`global_context_loss`: attention-pooled context vectors (softmax over positions)
  of the teacher and of the adapter-projected student.
* :class:`KDHeads` owns the 1×1×1 adapters (student width → teacher width per stage) and, for the
  public context form, the :class:`~distillation.losses.recokd.GlobalContextBlock` per stage. It is
  optimized with the student (``adapters = "trained"``) or left as initialised (``"fixed"``, as the
  public ReCo-KD code leaves it) and is never exported.

The public ReCo-KD configuration differs in form, not only in weights; each difference is a
``[kd]`` key (docs/kd-recipes.md): the attention form and temperature, raw or relative error, how
the foreground term is averaged over a batch, the attention-map L1 term, the context form, fixed
adapters, the bottleneck stage, and a linear warm-up of every KD weight (:meth:`KDConfig.scale_at`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from distillation.losses.feature_maps import attention_maps, select_stages, stage_weights
from distillation.losses.recokd import GlobalContextBlock
from distillation.losses.segmentation import downsample_labels

__all__ = [
    "KDConfig",
    "KDHeads",
    "logit_kd_loss",
    "LogitKDLoss",
    "class_balanced_masks",
    "sard_loss",
    "SARDLoss",
    "context_affinity_loss",
    "global_context_loss",
    "ContextLoss",
    "stage_weights",
    "select_stages",
]


def _check(rule: Any, text: str) -> dict[str, Any]:
    return {"check": (rule, text)}


@dataclass(frozen=True)
class KDConfig:
    """Which KD terms are on and how much each weighs (preset table ``[kd]``)."""

    logit: bool = False
    logit_weight: float = 1.0
    temperature: float = 2.0
    logit_class_balanced: bool = False  # average the KL per class, not per voxel
    sard: bool = False
    sard_weight: float = 1.0
    sard_fg_weight: float = 1.0
    sard_bg_weight: float = 0.1
    ca: bool = False
    ca_weight: float = 1.0
    ca_affinity: bool = True
    ca_global: bool = True
    ca_grid: int = 8
    stage_decay: float = 0.5
    stages: tuple[int, ...] = field(default=())  # empty = every encoder stage
    # --- the public ReCo-KD code's forms (docs/kd-recipes.md); the defaults are this project's ---
    bottleneck: bool = True  # False: feature terms skip the last (lowest-resolution) encoder stage
    warmup_fraction: float = field(default=0.0, metadata=_check(
        lambda v: 0 <= v <= 1, "a number from 0 to 1"))  # every KD weight ramps 0 -> 1 over it; 0 = none
    attention: Literal["linear", "softmax"] = "linear"  # the teacher attention weighting MS-SARD
    attention_temperature: float = field(default=0.5, metadata=_check(lambda v: v > 0, "a positive number"))
    sard_error: Literal["relative", "raw"] = "relative"  # relative: divided by the teacher's mean square
    sard_reduction: Literal["sample", "pooled"] = "sample"  # pooled: fg mean over the batch's (case, class)
    attention_l1: bool = False  # L1 between student and teacher attention maps (the public mask loss)
    attention_l1_weight: float = field(default=1.0, metadata=_check(lambda v: v >= 0, "zero or a positive number"))
    ca_form: Literal["affinity", "gc"] = "affinity"  # gc: the public global-context block + feature MSE
    adapters: Literal["trained", "fixed"] = "trained"  # fixed: KDHeads stay as initialised

    @property
    def needs_features(self) -> bool:
        return self.sard or self.ca or self.attention_l1

    @property
    def needs_teacher(self) -> bool:
        """Whether any term reads the teacher (without KD it only lends its architecture)."""
        return self.logit or self.needs_features

    @property
    def recipe(self) -> str:
        """The KD method as the model card's provenance names it, e.g. ``logit+sard+ca``."""
        terms = (("logit", self.logit), ("sard", self.sard), ("ca", self.ca), ("attn", self.attention_l1))
        return "+".join(n for n, on in terms if on) or "none"

    def scale_at(self, epoch: int, epochs: int) -> float:
        """The factor on every KD weight in ``epoch`` (0-based) of ``epochs``: 1 without warm-up,
        else ``min(epoch / (warmup_fraction · epochs), 1)`` (the public code's linear warm-up)."""
        if self.warmup_fraction <= 0:
            return 1.0
        return min(epoch / (self.warmup_fraction * epochs), 1.0)


class KDHeads(nn.Module):
    """1×1×1 conv adapters projecting each student stage to the teacher's width, and with
    ``context`` a :class:`GlobalContextBlock` per stage (the public context form)."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int],
                 context: bool = False) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(
                "student and teacher must have the same number of encoder stages, got "
                f"{len(student_channels)} and {len(teacher_channels)}"
            )
        self.student_channels = tuple(int(c) for c in student_channels)
        self.teacher_channels = tuple(int(c) for c in teacher_channels)
        self.adapters = nn.ModuleList(
            nn.Conv3d(cs, ct, kernel_size=1, bias=True)
            for cs, ct in zip(self.student_channels, self.teacher_channels, strict=True)
        )
        self.context = nn.ModuleList(GlobalContextBlock(ct) for ct in self.teacher_channels) if context else None

    def fix(self) -> KDHeads:
        """Leave the heads as initialised (the public code's fixed adapters): no gradients, and an
        adapter between equal widths is the identity, as the public code has no adapter there."""
        with torch.no_grad():
            for a in self.adapters:
                if a.in_channels == a.out_channels:
                    a.weight.zero_()
                    a.weight[:, :, 0, 0, 0] = torch.eye(a.in_channels)
                    a.bias.zero_()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def init_identity(self) -> None:
        """Identity adapters where widths match (used by tests; not a training default)."""
        with torch.no_grad():
            for a in self.adapters:
                a.weight.zero_()
                n = min(a.in_channels, a.out_channels)
                a.weight[:n, :n, 0, 0, 0] = torch.eye(n)
                a.bias.zero_()

    def forward(self, student_features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(student_features) != len(self.adapters):
            raise ValueError(
                f"KDHeads has {len(self.adapters)} adapters, got {len(student_features)} feature maps"
            )
        return [a(f) for a, f in zip(self.adapters, student_features, strict=True)]


# --- logit KD --------------------------------------------------------------------------------------


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  temperature: float = 2.0, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Temperature-scaled KL(teacher || student) per voxel, times T², averaged over voxels, or
    with ``labels`` ((B, *spatial) or (B, 1, *spatial)) over voxels within each present class, then
    over the classes (class-balanced)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student and teacher logits must have the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    t = float(temperature)
    log_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_t = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    kl = F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(1)  # (B, *spatial)
    if labels is None:
        return kl.mean() * t * t
    per_class, present = _class_means(kl, labels, student_logits.shape[1])
    present = present.float()
    return (per_class.sum(1) / present.sum(1).clamp_min(1.0)).mean() * t * t


class LogitKDLoss(nn.Module):
    """Class twin of :func:`logit_kd_loss` (``class_balanced``: pass the labels through)."""

    def __init__(self, temperature: float = 2.0, class_balanced: bool = False) -> None:
        super().__init__()
        self.temperature = temperature
        self.class_balanced = class_balanced

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        return logit_kd_loss(student_logits, teacher_logits, self.temperature,
                             labels if self.class_balanced else None)


# --- MS-SARD ---------------------------------------------------------------------------------------


def class_balanced_masks(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K, *spatial) float masks: ``1[y = k] / |{y = k}|`` per sample and class.

    Every class present in a sample sums to exactly 1 over its voxels, whatever its size;
    an absent class is all zeros.
    """
    onehot = F.one_hot(labels.long(), num_classes).movedim(-1, 1).float()
    sizes = onehot.flatten(2).sum(-1)
    return onehot / sizes.clamp_min(1.0).view(*sizes.shape, *([1] * (onehot.ndim - 2)))


def _class_means(values: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and class, the mean of ``values`` (B, *spatial) over that class's voxels (labels
    resized to ``values``' grid), and whether the class is present: two (B, K) tensors."""
    masks = class_balanced_masks(downsample_labels(labels, values.shape[1:]), num_classes)
    return (masks * values[:, None]).flatten(2).sum(-1), masks.flatten(2).sum(-1) > 0


def _sard_stage(projected: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                num_classes: int, fg_weight: float, bg_weight: float, attention: str = "linear",
                temperature: float = 0.5, error: str = "relative", reduction: str = "sample") -> torch.Tensor:
    if projected.shape != teacher.shape:
        raise ValueError(
            "projected student features must match the teacher's shape, got "
            f"{tuple(projected.shape)} and {tuple(teacher.shape)}"
        )
    t = teacher.detach().float()
    sp, ch = attention_maps(t, attention, temperature)  # (B, *s), (B, C)
    sq = (projected.float() - t) ** 2
    err = (sq * ch.view(*ch.shape, *([1] * (sq.ndim - 2)))).mean(1) * sp  # (B, *s)
    if error == "relative":  # the stage's scale drops out
        scale = t.pow(2).flatten(1).mean(1).clamp_min(1e-8)
        err = err / scale.view(-1, *([1] * (err.ndim - 1)))
    per_class, present = _class_means(err, labels, num_classes)  # (B, K) each
    present = present.float()
    if reduction == "pooled":  # the public code: one mean over every (case, class) in the batch
        bg = (per_class[:, 0] * present[:, 0]).sum() / present[:, 0].sum().clamp_min(1.0)
        fg = (per_class[:, 1:] * present[:, 1:]).sum() / present[:, 1:].sum().clamp_min(1.0)
        return fg_weight * fg + bg_weight * bg
    bg = per_class[:, 0]
    if num_classes > 1:
        fg_present = present[:, 1:]
        fg = (per_class[:, 1:] * fg_present).sum(1) / fg_present.sum(1).clamp_min(1.0)
    else:
        fg = torch.zeros_like(bg)
    return (fg_weight * fg + bg_weight * bg).mean()


def sard_loss(projected_student: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor],
              labels: torch.Tensor, num_classes: int, *, fg_weight: float = 1.0,
              bg_weight: float = 0.1, stage_decay: float = 0.5,
              stages: Sequence[int] = (), bottleneck: bool = True, attention: str = "linear",
              temperature: float = 0.5, error: str = "relative", reduction: str = "sample") -> torch.Tensor:
    """Multi-scale, size-normalized, attention-weighted feature distillation (see module doc)."""
    idx = select_stages(len(teacher_features), stages, bottleneck)
    weights = stage_weights(len(idx), stage_decay)
    total = teacher_features[0].new_zeros((), dtype=torch.float32)
    for w, s in zip(weights, idx, strict=True):
        total = total + w * _sard_stage(projected_student[s], teacher_features[s], labels, num_classes,
                                        fg_weight, bg_weight, attention, temperature, error, reduction)
    return total


class SARDLoss(nn.Module):
    """Class twin of :func:`sard_loss` (the adapters live in :class:`KDHeads`)."""

    def __init__(self, num_classes: int, fg_weight: float = 1.0, bg_weight: float = 0.1,
                 stage_decay: float = 0.5, stages: Sequence[int] = (), **form: Any) -> None:
        super().__init__()
        self.num_classes, self.fg_weight, self.bg_weight = num_classes, fg_weight, bg_weight
        self.stage_decay, self.stages = stage_decay, tuple(stages)
        self.form = form  # bottleneck, attention, temperature, error, reduction (sard_loss's keywords)

    def forward(self, projected_student: Sequence[torch.Tensor],
                teacher_features: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        return sard_loss(projected_student, teacher_features, labels, self.num_classes,
                         fg_weight=self.fg_weight, bg_weight=self.bg_weight,
                         stage_decay=self.stage_decay, stages=self.stages, **self.form)


# --- MS-CA -----------------------------------------------------------------------------------------


def _pooled(f: torch.Tensor, grid: int) -> torch.Tensor:
    size = tuple(min(grid, s) for s in f.shape[2:])
    pool = F.adaptive_avg_pool3d if f.ndim == 5 else F.adaptive_avg_pool2d
    return pool(f.float(), size).flatten(2)  # (B, C, N), N <= grid^d


def _affinity(f: torch.Tensor, grid: int) -> torch.Tensor:
    p = F.normalize(_pooled(f, grid), dim=1, eps=1e-8)
    return p.transpose(1, 2) @ p  # (B, N, N) cosine similarities


def context_affinity_loss(student_features: Sequence[torch.Tensor],
                          teacher_features: Sequence[torch.Tensor], *, grid: int = 8,
                          stage_decay: float = 0.5, stages: Sequence[int] = (),
                          bottleneck: bool = True) -> torch.Tensor:
    """MSE between student and teacher pairwise cosine affinities of pooled features, per stage.

    Widths may differ (affinities are N×N either way); the objective passes the
    adapter-projected student features so the adapters learn from this term too.
    """
    idx = select_stages(len(teacher_features), stages, bottleneck)
    weights = stage_weights(len(idx), stage_decay)
    total = teacher_features[0].new_zeros((), dtype=torch.float32)
    for w, s in zip(weights, idx, strict=True):
        a_s = _affinity(student_features[s], grid)
        a_t = _affinity(teacher_features[s].detach(), grid)
        total = total + w * F.mse_loss(a_s, a_t)
    return total


def _global_context(f: torch.Tensor) -> torch.Tensor:
    flat = f.float().flatten(2)  # (B, C, N)
    attn = torch.softmax(flat.mean(1), dim=-1)  # (B, N): softmax over positions
    return (flat * attn[:, None]).sum(-1)  # (B, C)


def global_context_loss(projected_student: Sequence[torch.Tensor],
                        teacher_features: Sequence[torch.Tensor], *, stage_decay: float = 0.5,
                        stages: Sequence[int] = (), bottleneck: bool = True) -> torch.Tensor:
    """MSE between attention-pooled context vectors of teacher and adapter-projected student."""
    idx = select_stages(len(teacher_features), stages, bottleneck)
    weights = stage_weights(len(idx), stage_decay)
    total = teacher_features[0].new_zeros((), dtype=torch.float32)
    for w, s in zip(weights, idx, strict=True):
        c_s = _global_context(projected_student[s])
        c_t = _global_context(teacher_features[s].detach())
        total = total + w * F.mse_loss(c_s, c_t)
    return total


class ContextLoss(nn.Module):
    """MS-CA: affinity alignment and/or global-context alignment, per stage."""

    def __init__(self, affinity: bool = True, global_context: bool = True, grid: int = 8,
                 stage_decay: float = 0.5, stages: Sequence[int] = (), bottleneck: bool = True) -> None:
        super().__init__()
        if not (affinity or global_context):
            raise ValueError("MS-CA needs affinity or global context (or both), got neither")
        self.affinity, self.global_context, self.grid = affinity, global_context, grid
        self.stage_decay, self.stages, self.bottleneck = stage_decay, tuple(stages), bottleneck

    def forward(self, projected_student: Sequence[torch.Tensor],
                teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
        total = teacher_features[0].new_zeros((), dtype=torch.float32)
        where = {"stage_decay": self.stage_decay, "stages": self.stages, "bottleneck": self.bottleneck}
        if self.affinity:
            total = total + context_affinity_loss(projected_student, teacher_features, grid=self.grid, **where)
        if self.global_context:
            total = total + global_context_loss(projected_student, teacher_features, **where)
        return total
