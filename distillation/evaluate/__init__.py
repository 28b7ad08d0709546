"""Dice, HD95 and NSD per label and BraTS region (MONAI), measured through the node's inference."""

from distillation.evaluate.dataset import EvalCase, iter_cases, nifti_volume, read_nifti
from distillation.evaluate.metrics import (
    BRATS_REGIONS,
    StructureMetrics,
    aggregate,
    brats_regions_for,
    case_metrics,
    structure_metrics,
)
from distillation.evaluate.run import Evaluation, evaluate_model, evaluate_predictions

__all__ = [
    "BRATS_REGIONS",
    "EvalCase",
    "Evaluation",
    "StructureMetrics",
    "aggregate",
    "brats_regions_for",
    "case_metrics",
    "evaluate_model",
    "evaluate_predictions",
    "iter_cases",
    "nifti_volume",
    "read_nifti",
    "structure_metrics",
]
