"""Which folds, checkpoints, trainer and configuration an nnU-Net v2 results folder holds, read as
``nnUNetPredictor.initialize_from_trained_model_folder`` reads them.

nnU-Net takes the configuration and trainer from the first fold's checkpoint (``init_args
["configuration"]``, ``trainer_name``), never from an argument, and by default every ``fold_N``
folder that holds the checkpoint (``fold_all`` only when asked). The folder's own name,
``Trainer__Plans__Configuration``, says the same three things: a disagreement between the folder
name, the checkpoints and what the caller asked for is refused with the key named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pacsnode.errors import ModelError

__all__ = ["CHECKPOINTS", "FoldCheckpoint", "FolderName", "parse_folder_name", "available_folds",
           "read_fold_checkpoints"]

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
_NAME = re.compile(r"^(?P<trainer>[^_].*?)__(?P<plans>.+?)__(?P<configuration>[^_].*)$")


@dataclass(frozen=True)
class FolderName:
    """``Trainer__Plans__Configuration`` of an nnU-Net results folder."""

    trainer: str
    plans: str
    configuration: str


@dataclass(frozen=True)
class FoldCheckpoint:
    """One fold's checkpoint as nnU-Net's predictor uses it."""

    fold: str
    path: Path
    weights: Mapping[str, torch.Tensor]
    trainer_name: str
    configuration: str
    plans_name: str | None
    mirror_axes: tuple[int, ...] | None
    epoch: int | None


def parse_folder_name(folder: Path) -> FolderName | None:
    """The three parts of ``Trainer__Plans__Configuration``, or None for another folder name."""
    m = _NAME.match(folder.name)
    if m is None:
        return None
    return FolderName(m["trainer"], m["plans"], m["configuration"])


def available_folds(folder: Path, checkpoint_name: str) -> list[str]:
    """nnU-Net's ``auto_detect_available_folds``: every ``fold_N`` (not ``fold_all``) with the checkpoint."""
    found = []
    for p in folder.glob("fold_*"):
        name = p.name[len("fold_"):]
        if p.is_dir() and name.isdigit() and (p / checkpoint_name).is_file():
            found.append(name)
    return sorted(found, key=int)


def _fold_dir(folder: Path, fold: str) -> Path:
    path = folder / f"fold_{fold}"
    if not path.is_dir():
        found = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
        raise ModelError(f"an nnU-Net model folder must contain fold_{fold}/ for fold {fold!r}, got "
                         f"{found or 'no fold folders'} in {folder}")
    return path


def _load(path: Path) -> Mapping[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle, zip or torch errors: one line naming the file
        raise ModelError(f"{path} must be a readable nnU-Net checkpoint, got {type(exc).__name__}: {exc}") from None
    if not isinstance(checkpoint, Mapping) or "network_weights" not in checkpoint:
        keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ModelError(f"{path.name} must be an nnU-Net checkpoint with 'network_weights', got {keys}")
    return checkpoint


def _one(path: Path, fold: str) -> FoldCheckpoint:
    ck = _load(path)
    init = ck.get("init_args")
    if not isinstance(init, Mapping) or "configuration" not in init:
        raise ModelError(f"{path} must carry init_args.configuration (nnU-Net v2 >= 2.0 checkpoints do), "
                         f"got init_args {sorted(init) if isinstance(init, Mapping) else init!r}")
    plans = init.get("plans")
    plans_name = str(plans["plans_name"]) if isinstance(plans, Mapping) and "plans_name" in plans else None
    axes = ck.get("inference_allowed_mirroring_axes")
    return FoldCheckpoint(
        fold=fold, path=path, weights=ck["network_weights"],
        trainer_name=str(ck.get("trainer_name", "nnUNetTrainer")),
        configuration=str(init["configuration"]), plans_name=plans_name,
        mirror_axes=None if axes is None else tuple(int(a) for a in axes),
        epoch=ck.get("current_epoch"))


def read_fold_checkpoints(folder: Path, folds: Sequence[int | str] | None, checkpoint_name: str,
                          configuration: str | None) -> list[FoldCheckpoint]:
    """The chosen folds' checkpoints (all available by default), checked against each other, the folder
    name and ``configuration`` (when given); the configuration to use is ``result[0].configuration``."""
    if checkpoint_name not in CHECKPOINTS:
        raise ModelError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint_name!r}")
    if folds is None:
        chosen = available_folds(folder, checkpoint_name)
        if not chosen:
            found = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
            raise ModelError(f"an nnU-Net model folder must hold fold_N/{checkpoint_name} for at least one fold "
                             f"(fold_all only when asked for), got {found or 'no fold folders'} in {folder}")
    else:
        chosen = [str(f) for f in folds]
        if not chosen or len(set(chosen)) != len(chosen):
            raise ModelError(f"folds must be distinct fold numbers or 'all', got {list(folds)}")
    out = []
    for fold in chosen:
        path = _fold_dir(folder, fold) / checkpoint_name
        if not path.is_file():
            have = sorted(p.name for p in path.parent.glob("checkpoint_*.pth"))
            raise ModelError(f"fold {fold} must contain {checkpoint_name}, got {have or 'no checkpoint'} in "
                             f"{path.parent}")
        out.append(_one(path, fold))
    first = out[0]
    for ck in out[1:]:
        for key, mine, theirs in (("init_args.configuration", ck.configuration, first.configuration),
                                  ("trainer_name", ck.trainer_name, first.trainer_name),
                                  ("inference_allowed_mirroring_axes", ck.mirror_axes, first.mirror_axes)):
            if mine != theirs:
                raise ModelError(f"every fold must come from one training, got {key} {theirs!r} in fold "
                                 f"{first.fold} and {mine!r} in fold {ck.fold}")
    name = parse_folder_name(folder)
    if name is not None:
        for key, expected, got in (("init_args.configuration", name.configuration, first.configuration),
                                   ("trainer_name", name.trainer, first.trainer_name),
                                   ("init_args.plans.plans_name", name.plans, first.plans_name)):
            if got is not None and got != expected:
                raise ModelError(f"the checkpoint's {key} must match the folder name {folder.name!r}, got "
                                 f"{got!r} in {first.path}")
    if configuration is not None and configuration != first.configuration:
        raise ModelError(f"configuration must be the checkpoint's init_args.configuration "
                         f"{first.configuration!r} (nnU-Net predicts with it), got {configuration!r}")
    return out
