"""Data: nnU-Net raw datasets → node-preprocessed cache → augmented patch batches."""

from distillation.data.augment import AugmentConfig, build_augmentation
from distillation.data.loader import PatchBatches, make_loader, validation_patches
from distillation.data.plan import DataPlan, ct_normalization, make_plan
from distillation.data.preprocess import (
    PreprocessedCase,
    load_preprocessed,
    node_preprocess,
    preprocess_dataset,
)
from distillation.data.raw import RawCase, RawDataset, load_case, read_dataset
from distillation.data.sampler import forced_foreground, sample_patch
from distillation.data.toy import write_toy_dataset
from distillation.data.unlabelled import find_unlabelled, preprocess_unlabelled

__all__ = [
    "AugmentConfig",
    "DataPlan",
    "PatchBatches",
    "PreprocessedCase",
    "RawCase",
    "RawDataset",
    "build_augmentation",
    "ct_normalization",
    "find_unlabelled",
    "forced_foreground",
    "load_case",
    "load_preprocessed",
    "make_loader",
    "make_plan",
    "node_preprocess",
    "preprocess_dataset",
    "preprocess_unlabelled",
    "read_dataset",
    "sample_patch",
    "validation_patches",
    "write_toy_dataset",
]
