"""Optimizer and learning-rate schedule as nnU-Net: SGD Nesterov 0.99, poly decay (AdamW optional)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from distillation.config import OptimConfig

__all__ = ["poly_lr", "build_optimizer", "set_lr"]


def poly_lr(epoch: int, max_epochs: int, initial_lr: float, exponent: float = 0.9) -> float:
    """``initial_lr · (1 - epoch / max_epochs) ** exponent`` (nnU-Net's PolyLRScheduler)."""
    return initial_lr * (1 - epoch / max_epochs) ** exponent


def build_optimizer(params: Iterable[torch.nn.Parameter] | Iterable[dict], cfg: OptimConfig
                    ) -> torch.optim.Optimizer:
    """SGD (Nesterov, momentum) or AdamW over ``params`` (tensors or param groups)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                           weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
