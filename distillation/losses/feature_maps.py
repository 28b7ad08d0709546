"""What the feature KD terms share: which encoder stages they read, how stages are weighted, and
the attention maps that weight the feature error.

* :func:`select_stages`: the stage indices a term reads (all, a chosen subset, with or without the
  bottleneck, the last and lowest-resolution stage).
* :func:`stage_weights`: ``decay**k`` over the selected stages, normalized to sum 1. The public
  ReCo-KD code weighs stages ``r**k`` with ``r = 2**(-3·alpha)`` (``alpha`` 0.4), i.e. this with
  ``decay = 2**-1.2``.
* :func:`attention_maps`: spatial and channel attention of a feature map, both mean 1.
  ``linear`` (this project's): spatial ``mean_c |f|`` divided by its mean; channel
  ``C · softmax(mean_x |f|)``. ``softmax`` (the public code's): spatial ``N · softmax(mean_c |f| / T)``
  over the N positions and channel ``C · softmax(mean_x |f| / T)``, T usually 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["select_stages", "stage_weights", "attention_maps"]


def select_stages(n: int, stages: Sequence[int] = (), bottleneck: bool = True) -> list[int]:
    """Indices of the stages a term reads out of ``n``: ``stages`` or all; without the
    bottleneck (stage ``n - 1``) when ``bottleneck`` is False."""
    idx = list(stages) or list(range(n))
    if not bottleneck:
        idx = [s for s in idx if s != n - 1]
    if not idx:
        raise ValueError(f"feature KD needs at least one encoder stage, got none of {n} "
                         f"(stages={list(stages)}, bottleneck={bottleneck})")
    return idx


def stage_weights(n: int, decay: float = 0.5) -> list[float]:
    """``decay**s`` for stages 0..n-1 (highest resolution first), normalized to sum 1."""
    w = [decay**s for s in range(n)]
    total = sum(w)
    return [x / total for x in w]


def attention_maps(f: torch.Tensor, form: str = "linear", temperature: float = 0.5
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(spatial (B, *spatial), channel (B, C)) attention of ``f`` (B, C, *spatial), each mean 1."""
    a = f.abs()
    spatial = a.mean(1)  # (B, *s)
    pooled = a.flatten(2).mean(-1)  # (B, C)
    if form == "softmax":
        flat = torch.softmax(spatial.flatten(1) / temperature, dim=1) * spatial[0].numel()
        return flat.view_as(spatial), torch.softmax(pooled / temperature, dim=1) * f.shape[1]
    if form != "linear":
        raise ValueError(f"attention form must be 'linear' or 'softmax', got {form!r}")
    mean = spatial.flatten(1).mean(1).clamp_min(1e-8).view(-1, *([1] * (spatial.ndim - 1)))
    return spatial / mean, torch.softmax(pooled, dim=1) * f.shape[1]
