"""One checkpoint format for teachers and students (shared by ``distill train-teacher``, ``distill
distill``, ``distill export`` and ``distill import-nnunet``).

A checkpoint is a ``torch.save``-d dict:

=====================  ==========================================================================
``format``             ``"pacsnode.distill.checkpoint/1"``
``network_class_name`` ``"PlainConvUNet"`` / ``"ResidualEncoderUNet"`` (or nnU-Net's dotted name)
``arch_kwargs``        plans-style arch kwargs of the *teacher-width* architecture (dotted strings
                       allowed); the network is rebuilt as ``build_network(..., width_factor)``
``input_channels``     int
``num_classes``        int (background included for softmax models)
``width_factor``       float (1.0 for a teacher)
``min_features``       int, the width floor used
``state_dict``         the network's weights only (no KD adapters)
``card``               dict: the model card without provenance metrics (may be ``{}`` early on)
``epoch``              int, epochs completed
``optimizer``          optimizer state dict or ``None``
``kd_heads``           state dict of the KD adapters/heads or ``None`` (never exported)
``extra``              free-form dict (scheduler, grad scaler, config, metrics, ...)
=====================  ==========================================================================

:func:`load_checkpoint` returns a :class:`Checkpoint` and :meth:`Checkpoint.build_network` rebuilds
the network with strict weight loading.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_FORMAT = "pacsnode.distill.checkpoint/1"
_REQUIRED = ("network_class_name", "arch_kwargs", "input_channels", "num_classes", "state_dict")


@dataclass(frozen=True)
class Checkpoint:
    network_class_name: str
    arch_kwargs: dict[str, Any]
    input_channels: int
    num_classes: int
    state_dict: Mapping[str, torch.Tensor]
    width_factor: float = 1.0
    min_features: int = 4
    card: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    optimizer: dict[str, Any] | None = None
    kd_heads: Mapping[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def build_network(self, deep_supervision: bool = False) -> nn.Module:
        """The network with these weights loaded strictly (eval mode, deep supervision as asked)."""
        from distillation.networks import build_network

        net = build_network(self.network_class_name, self.arch_kwargs, self.input_channels, self.num_classes,
                            width_factor=self.width_factor, min_features=self.min_features,
                            deep_supervision=deep_supervision, initialize=False)
        net.load_state_dict(self.state_dict, strict=True)
        return net.eval()


def _state_dict_of(network: nn.Module) -> dict[str, torch.Tensor]:
    module = getattr(network, "module", network)  # unwrap DDP
    module = getattr(module, "_orig_mod", module)  # unwrap torch.compile
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(path: str | os.PathLike, network: nn.Module, *, network_class_name: str,
                    arch_kwargs: Mapping[str, Any], input_channels: int, num_classes: int,
                    width_factor: float = 1.0, min_features: int = 4, card: Mapping[str, Any] | None = None,
                    epoch: int = 0, optimizer: torch.optim.Optimizer | Mapping[str, Any] | None = None,
                    kd_heads: nn.Module | Mapping[str, torch.Tensor] | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.state_dict()
    if isinstance(kd_heads, nn.Module):
        kd_heads = _state_dict_of(kd_heads)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "network_class_name": network_class_name,
        "arch_kwargs": dict(arch_kwargs),
        "input_channels": int(input_channels),
        "num_classes": int(num_classes),
        "width_factor": float(width_factor),
        "min_features": int(min_features),
        "state_dict": _state_dict_of(network),
        "card": dict(card or {}),
        "epoch": int(epoch),
        "optimizer": dict(optimizer) if optimizer is not None else None,
        "kd_heads": dict(kd_heads) if kd_heads is not None else None,
        "extra": dict(extra or {}),
    }
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; a missing field is a ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint must be an existing file, got {str(path)!r}")
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(payload, Mapping):
        raise ValueError(f"checkpoint must be a dict saved by save_checkpoint, got {type(payload).__name__} "
                         f"in {path}")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"checkpoint must have the keys {list(_REQUIRED)}, {path} lacks {missing}")
    return Checkpoint(
        network_class_name=str(payload["network_class_name"]),
        arch_kwargs=dict(payload["arch_kwargs"]),
        input_channels=int(payload["input_channels"]),
        num_classes=int(payload["num_classes"]),
        state_dict=payload["state_dict"],
        width_factor=float(payload.get("width_factor", 1.0)),
        min_features=int(payload.get("min_features", 4)),
        card=dict(payload.get("card") or {}),
        epoch=int(payload.get("epoch", 0)),
        optimizer=payload.get("optimizer"),
        kd_heads=payload.get("kd_heads"),
        extra=dict(payload.get("extra") or {}),
    )
