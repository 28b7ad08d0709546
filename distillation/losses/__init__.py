"""Losses: nnU-Net's Dice + CE with deep supervision, and the KD terms (logit, MS-SARD, MS-CA)."""

from distillation.losses.kd import (
    ContextLoss,
    KDConfig,
    KDHeads,
    LogitKDLoss,
    SARDLoss,
    class_balanced_masks,
    context_affinity_loss,
    global_context_loss,
    logit_kd_loss,
    sard_loss,
    stage_weights,
)
from distillation.losses.objective import Objective
from distillation.losses.segmentation import (
    DeepSupervisionLoss,
    DiceCELoss,
    SoftDiceLoss,
    deep_supervision_weights,
    dice_ce_loss,
    downsample_labels,
    soft_dice_loss,
)

__all__ = [
    "ContextLoss",
    "DeepSupervisionLoss",
    "DiceCELoss",
    "KDConfig",
    "KDHeads",
    "LogitKDLoss",
    "Objective",
    "SARDLoss",
    "SoftDiceLoss",
    "class_balanced_masks",
    "context_affinity_loss",
    "deep_supervision_weights",
    "dice_ce_loss",
    "downsample_labels",
    "global_context_loss",
    "logit_kd_loss",
    "sard_loss",
    "soft_dice_loss",
    "stage_weights",
]
