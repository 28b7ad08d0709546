"""Segmentation loss as nnU-Net v2 trains it: soft Dice + cross-entropy, with deep supervision.

* :func:`soft_dice_loss` / :class:`SoftDiceLoss`: nnU-Net's ``MemoryEfficientSoftDiceLoss``
  (softmax probabilities, ``smooth=1e-5``, background excluded, optional ``batch_dice``);
  returns ``-dice`` like nnU-Net, so a perfect prediction scores -1.
* :func:`dice_ce_loss` / :class:`DiceCELoss`: ``CE + Dice`` with weights 1 and 1.
* :func:`deep_supervision_weights`: ``1/2^i``, the lowest resolution weighted 0, normalized.
* :class:`DeepSupervisionLoss`: applies a loss to every output (highest resolution first)
  against the label map downsampled (nearest) to that output's shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "soft_dice_loss",
    "SoftDiceLoss",
    "dice_ce_loss",
    "DiceCELoss",
    "deep_supervision_weights",
    "downsample_labels",
    "DeepSupervisionLoss",
]


def _as_index(target: torch.Tensor) -> torch.Tensor:
    """Labels as (B, *spatial) int64; accepts (B, 1, *spatial) as nnU-Net passes them."""
    if target.ndim >= 2 and target.shape[1] == 1:
        target = target[:, 0]
    return target.long()


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    batch_dice: bool = False,
    do_bg: bool = False,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """Negative soft Dice of ``softmax(logits)`` against integer labels, as nnU-Net computes it.

    ``logits`` is (B, K, *spatial); ``target`` is (B, *spatial) or (B, 1, *spatial).
    """
    if logits.ndim < 3:
        raise ValueError(f"logits must be (B, K, *spatial), got shape {tuple(logits.shape)}")
    target = _as_index(target)
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), 1)
    axes = tuple(range(2, logits.ndim))
    with torch.no_grad():
        onehot = F.one_hot(target, num_classes).movedim(-1, 1).to(probs.dtype)
    if not do_bg:
        probs = probs[:, 1:]
        onehot = onehot[:, 1:]
    intersect = (probs * onehot).sum(axes)
    sum_pred = probs.sum(axes)
    sum_gt = onehot.sum(axes)
    if batch_dice:
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    dc = (2 * intersect + smooth) / torch.clip(sum_gt + sum_pred + smooth, 1e-8)
    return -dc.mean()


def dice_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    batch_dice: bool = False,
    weight_dice: float = 1.0,
    weight_ce: float = 1.0,
) -> torch.Tensor:
    """``weight_ce * CE + weight_dice * SoftDice`` (nnU-Net's ``DC_and_CE_loss``)."""
    index = _as_index(target)
    ce = F.cross_entropy(logits.float(), index) if weight_ce else logits.new_zeros(())
    dc = soft_dice_loss(logits, index, batch_dice=batch_dice) if weight_dice else logits.new_zeros(())
    return weight_ce * ce + weight_dice * dc


class SoftDiceLoss(nn.Module):
    """Class twin of :func:`soft_dice_loss`."""

    def __init__(self, batch_dice: bool = False, do_bg: bool = False, smooth: float = 1e-5) -> None:
        super().__init__()
        self.batch_dice, self.do_bg, self.smooth = batch_dice, do_bg, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(logits, target, batch_dice=self.batch_dice, do_bg=self.do_bg,
                              smooth=self.smooth)


class DiceCELoss(nn.Module):
    """Class twin of :func:`dice_ce_loss`."""

    def __init__(self, batch_dice: bool = False, weight_dice: float = 1.0, weight_ce: float = 1.0) -> None:
        super().__init__()
        self.batch_dice, self.weight_dice, self.weight_ce = batch_dice, weight_dice, weight_ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_ce_loss(logits, target, batch_dice=self.batch_dice,
                            weight_dice=self.weight_dice, weight_ce=self.weight_ce)


def deep_supervision_weights(n: int, ddp: bool = False) -> list[float]:
    """nnU-Net's weights for ``n`` outputs (highest resolution first): 1/2^i, last 0, normalized.

    Under DDP the last weight is 1e-6 instead of 0, as nnU-Net does, so every parameter gets
    a gradient and DDP needs no ``find_unused_parameters``.
    """
    if n < 1:
        raise ValueError(f"the number of deep-supervision outputs must be at least 1, got {n}")
    if n == 1:
        return [1.0]
    w = [1.0 / 2**i for i in range(n)]
    w[-1] = 1e-6 if ddp else 0.0
    total = sum(w)
    return [x / total for x in w]


def downsample_labels(target: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Integer label map (B, *spatial) or (B, 1, *spatial) resized to ``shape`` by nearest neighbour."""
    index = _as_index(target)
    if tuple(index.shape[1:]) == tuple(shape):
        return index
    out = F.interpolate(index[:, None].float(), size=tuple(shape), mode="nearest-exact")
    return out[:, 0].long()


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss(output_i, labels resized to output_i)`` over the outputs.

    ``outputs`` is a tensor (no deep supervision) or a sequence, highest resolution first.
    Weights default to :func:`deep_supervision_weights`; outputs with weight 0 are skipped.
    """

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 weights: Sequence[float] | None = None, ddp: bool = False) -> None:
        super().__init__()
        self.loss = loss if loss is not None else DiceCELoss()
        self.weights = None if weights is None else [float(w) for w in weights]
        self.ddp = ddp

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, _as_index(target))
        weights = self.weights or deep_supervision_weights(len(outputs), self.ddp)
        if len(weights) != len(outputs):
            raise ValueError(
                f"deep supervision needs one weight per output, got {len(weights)} weights "
                f"for {len(outputs)} outputs"
            )
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, outputs, strict=True):
            if w == 0:
                continue
            total = total + w * self.loss(out, downsample_labels(target, out.shape[2:]))
        return total
