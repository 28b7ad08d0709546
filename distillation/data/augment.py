"""Augmentation from MONAI, applied to image and label together (nnU-Net's set, CPU-friendly).

Rotation and scaling in one ``RandAffined`` resample (elastic deformation optional: it is the
slowest step on a CPU), then gamma, Gaussian noise, Gaussian blur, brightness
(multiplicative scale), contrast (additive shift) and mirroring along each axis.
Labels are resampled with nearest neighbour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AugmentConfig", "build_augmentation"]


@dataclass(frozen=True)
class AugmentConfig:
    """Preset table ``[augment]``; probabilities follow nnU-Net's defaults where it has one."""

    enabled: bool = True
    p_rotate: float = 0.2
    rotate_degrees: float = 30.0
    p_scale: float = 0.2
    scale_range: float = 0.3  # zoom factor drawn from [1 - r, 1 + r]
    p_elastic: float = 0.0  # Rand3DElastic: slow on a CPU, off by default
    p_noise: float = 0.1
    noise_std: float = 0.1
    p_blur: float = 0.2
    p_brightness: float = 0.15
    p_contrast: float = 0.15
    p_gamma: float = 0.3
    mirror_axes: tuple[int, ...] = (0, 1, 2)


def build_augmentation(cfg: AugmentConfig):  # -> monai.transforms.Compose
    """A MONAI ``Compose`` over dict samples ``{"image": (C, *s), "label": (1, *s)}``."""
    from monai.transforms import (
        Compose,
        Rand3DElasticd,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ("image", "label")
    if not cfg.enabled:
        return Compose([])
    rot = math.radians(cfg.rotate_degrees)
    t = []
    p_affine = 1 - (1 - cfg.p_rotate) * (1 - cfg.p_scale)
    if p_affine > 0:
        t.append(RandAffined(
            keys, prob=p_affine,
            rotate_range=(rot, rot, rot) if cfg.p_rotate > 0 else None,
            scale_range=(cfg.scale_range,) * 3 if cfg.p_scale > 0 else None,
            mode=("bilinear", "nearest"), padding_mode="zeros",
        ))
    if cfg.p_elastic > 0:
        t.append(Rand3DElasticd(keys, sigma_range=(9, 13), magnitude_range=(0, 200),
                                prob=cfg.p_elastic, mode=("bilinear", "nearest"), padding_mode="zeros"))
    t += [
        RandGaussianNoised("image", prob=cfg.p_noise, std=cfg.noise_std),
        RandGaussianSmoothd("image", prob=cfg.p_blur, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0),
                            sigma_z=(0.5, 1.0)),
        RandScaleIntensityd("image", factors=0.25, prob=cfg.p_brightness),
        RandShiftIntensityd("image", offsets=0.1, prob=cfg.p_contrast),
        RandAdjustContrastd("image", prob=cfg.p_gamma, gamma=(0.7, 1.5)),
    ]
    t += [RandFlipd(keys, prob=0.5, spatial_axis=a) for a in cfg.mirror_axes]
    return Compose(t)
