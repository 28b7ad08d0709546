"""The value every phantom generator returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PhantomCase"]


@dataclass(frozen=True)
class PhantomCase:
    """One synthetic case with its ground truth.

    ``images`` maps channel name → float32 array [k, i, j] (slice, row, column);
    ``labels`` is uint8 [k, i, j] on the same grid; ``affine_lps`` maps (k, i, j, 1)
    to LPS millimetres; ``spacing`` is (z, y, x) in the array's axis order.
    """

    images: dict[str, np.ndarray]
    labels: np.ndarray
    affine_lps: np.ndarray
    spacing: tuple[float, float, float]
    kind: str = "brain"
    seed: int = 0
    modality: str = "MR"
    label_names: dict[int, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> list[str]:
        """Channel names in order."""
        return list(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.labels.shape)  # type: ignore[return-value]
