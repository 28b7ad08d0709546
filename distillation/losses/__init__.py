"""Losses: nnU-Net's Dice + CE with deep supervision, and the KD terms (logit, MS-SARD, MS-CA, and the
public ReCo-KD code's attention L1 and global-context forms)."""

from distillation.losses.feature_maps import attention_maps, select_stages
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
from distillation.losses.recokd import GlobalContextBlock, attention_l1_loss, gc_context_loss
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
    "GlobalContextBlock",
    "KDConfig",
    "KDHeads",
    "LogitKDLoss",
    "Objective",
    "SARDLoss",
    "SoftDiceLoss",
    "attention_l1_loss",
    "attention_maps",
    "class_balanced_masks",
    "context_affinity_loss",
    "deep_supervision_weights",
    "dice_ce_loss",
    "downsample_labels",
    "gc_context_loss",
    "global_context_loss",
    "logit_kd_loss",
    "sard_loss",
    "select_stages",
    "soft_dice_loss",
    "stage_weights",
]
