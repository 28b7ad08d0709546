"""Build nnU-Net-compatible networks from plans-style ``arch_kwargs``; the width-factor student family.

A plans file (``plans["configurations"][cfg]["architecture"]``) names the class as
``dynamic_network_architectures.architectures.unet.PlainConvUNet`` and stores ``conv_op``,
``norm_op``, ``dropout_op`` and ``nonlin`` as dotted strings listed in ``_kw_requires_import``.
:func:`build_network` takes those as they are (or as classes) and builds our equivalent network.

Student family: ``width_factor`` (normally 2^-t) multiplies every stage's feature count, rounded to
the nearest integer and floored at ``min_features`` (default :data:`DEFAULT_MIN_FEATURES` = 4).
The floor keeps every convolution at least 4 channels wide, enough for instance norm statistics
and the narrowest member (1/8 of nnU-Net's 32 → 4 features at full resolution) unchanged; stages,
strides, kernels, convs per stage and patch size are never touched, so every student is a drop-in
for the teacher's inference pipeline.
"""

from __future__ import annotations

import copy
import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from distillation.networks.blocks import BasicBlockD, BottleneckD
from distillation.networks.unet import PlainConvUNet, ResidualEncoderUNet

__all__ = [
    "DEFAULT_MIN_FEATURES",
    "ARCHITECTURES",
    "build_network",
    "resolve_arch_kwargs",
    "scale_features",
    "count_parameters",
    "count_gflops",
    "default_plans_arch",
    "pool_and_conv_props",
]

DEFAULT_MIN_FEATURES = 4

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "PlainConvUNet": PlainConvUNet,
    "ResidualEncoderUNet": ResidualEncoderUNet,
}
_BLOCKS: dict[str, type[nn.Module]] = {"BasicBlockD": BasicBlockD, "BottleneckD": BottleneckD}
_IMPORTABLE_KEYS = ("conv_op", "norm_op", "dropout_op", "nonlin", "block")
# Keys build_network sets itself; a plans file never carries them in arch_kwargs.
_RESERVED = ("input_channels", "num_classes", "deep_supervision")


def _import_dotted(key: str, value: str) -> Any:
    short = value.rsplit(".", 1)[-1]
    if key == "block" and short in _BLOCKS:
        return _BLOCKS[short]
    if "." not in value:
        if hasattr(nn, value):
            return getattr(nn, value)
        raise ValueError(f"arch_kwargs[{key!r}] must be a dotted class path such as "
                         f"'torch.nn.modules.conv.Conv3d', got {value!r}")
    module_name, _, attr = value.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"arch_kwargs[{key!r}] must name an importable class, got {value!r} ({exc})") from exc


def resolve_arch_kwargs(arch_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``arch_kwargs`` with dotted class strings imported (the caller's dict is untouched).

    ``_kw_requires_import`` (if present) is honoured and dropped; ``conv_op``, ``norm_op``,
    ``dropout_op``, ``nonlin`` and ``block`` are imported whenever they are strings.
    """
    kwargs = copy.deepcopy(dict(arch_kwargs))
    requires = set(kwargs.pop("_kw_requires_import", ()) or ()) | set(_IMPORTABLE_KEYS)
    for key in requires:
        value = kwargs.get(key)
        if isinstance(value, str):
            kwargs[key] = _import_dotted(key, value)
    return kwargs


def _arch_class(name: str) -> type[nn.Module]:
    short = name.rsplit(".", 1)[-1]
    if short not in ARCHITECTURES:
        raise ValueError(f"network class must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    return ARCHITECTURES[short]


def scale_features(features: Sequence[int] | int, width_factor: float,
                   min_features: int = DEFAULT_MIN_FEATURES) -> list[int] | int:
    """``max(min_features, round(f * width_factor))`` for each ``f``; width 1 returns the input unchanged."""
    if not (width_factor > 0 and math.isfinite(width_factor)):
        raise ValueError(f"width_factor must be a positive number, got {width_factor!r}")
    if width_factor == 1.0:
        return list(features) if isinstance(features, (list, tuple)) else features
    if isinstance(features, (list, tuple)):
        return [max(min_features, int(round(f * width_factor))) for f in features]
    return max(min_features, int(round(features * width_factor)))


def build_network(arch_class_name: str, arch_kwargs: Mapping[str, Any], input_channels: int,
                  num_classes: int, width_factor: float = 1.0, min_features: int = DEFAULT_MIN_FEATURES,
                  deep_supervision: bool = True, initialize: bool = True) -> nn.Module:
    """Build a PlainConvUNet / ResidualEncoderUNet from plans-style ``arch_kwargs``.

    ``arch_class_name`` is the short name or nnU-Net's dotted path. With ``width_factor`` ≠ 1 the
    features per stage (and a ResEnc's ``bottleneck_channels`` / ``stem_channels``) are scaled
    with the ``min_features`` floor; everything else is kept. ``initialize`` applies nnU-Net's
    He initialisation (as ``get_network_from_plans`` does).
    """
    cls = _arch_class(arch_class_name)
    kwargs = resolve_arch_kwargs(arch_kwargs)
    for key in _RESERVED:
        kwargs.pop(key, None)
    if width_factor != 1.0:
        for key in ("features_per_stage", "bottleneck_channels", "stem_channels"):
            if kwargs.get(key) is not None:
                kwargs[key] = scale_features(kwargs[key], width_factor, min_features)
    try:
        net = cls(input_channels=int(input_channels), num_classes=int(num_classes),
                  deep_supervision=bool(deep_supervision), **kwargs)
    except TypeError as exc:
        raise ValueError(f"arch_kwargs do not fit {cls.__name__}: {exc}") from exc
    if initialize:
        net.apply(cls.initialize)
    return net


def count_parameters(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (the decoder's reference to the encoder is counted once)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def count_gflops(net: nn.Module, patch_size: Sequence[int], input_channels: int | None = None) -> float:
    """GFLOPs (2 × multiply-accumulates, PyTorch's FlopCounterMode convention) of one forward pass
    on a ``[1, C, *patch_size]`` input with deep supervision off, counted on the meta device
    (no memory, no compute). Convolutions and transposed convolutions dominate; norms and
    activations are not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if input_channels is None:
        first = next(m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)))
        input_channels = first.in_channels
    meta = copy.deepcopy(net).to("meta")
    decoder = getattr(meta, "decoder", None)
    if decoder is not None and hasattr(decoder, "deep_supervision"):
        decoder.deep_supervision = False
    x = torch.empty((1, input_channels, *patch_size), device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(x)
    return counter.get_total_flops() / 1e9


def pool_and_conv_props(spacing: Sequence[float], patch_size: Sequence[int], min_feature_map_size: int = 4,
                        max_numpool: int = 999999) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """nnU-Net v2's ``get_pool_and_conv_props``: (strides per stage, kernel sizes per stage, patch size
    padded to be divisible by the total stride).

    An axis is downsampled while it is at least 2·min_feature_map_size voxels and its current spacing
    is within a factor 2 of the finest; kernels are 1 on an axis until its spacing comes within a
    factor 2 of the finest, then 3; the bottleneck always gets 3.
    """
    dim = len(spacing)
    spacing_now = [float(s) for s in spacing]
    size_now = [int(s) for s in patch_size]
    strides: list[list[int]] = [[1] * dim]
    kernels: list[list[int]] = []
    num_pool = [0] * dim
    kernel = [1] * dim
    while True:
        valid = [i for i in range(dim) if size_now[i] >= 2 * min_feature_map_size]
        if not valid:
            break
        finest = min(spacing_now[i] for i in valid)
        valid = [i for i in valid if spacing_now[i] / finest < 2 and num_pool[i] < max_numpool]
        if len(valid) == 1 and size_now[valid[0]] < 3 * min_feature_map_size:
            break
        if not valid:
            break
        for d in range(dim):
            if kernel[d] != 3 and spacing_now[d] / min(spacing_now) < 2:
                kernel[d] = 3
        stride = [1] * dim
        for v in valid:
            stride[v] = 2
            num_pool[v] += 1
            spacing_now[v] *= 2
            size_now[v] = int(math.ceil(size_now[v] / 2))
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dim)
    divisible = [2 ** n for n in num_pool]
    padded = [int(math.ceil(p / d) * d) for p, d in zip(patch_size, divisible, strict=True)]
    return strides, kernels, padded


def default_plans_arch(patch_size: Sequence[int], spacing: Sequence[float], input_channels: int,
                       num_classes: int) -> dict[str, Any]:
    """nnU-Net's default 3d_fullres-like architecture for a patch, as a plans ``architecture`` dict.

    Features 32·2^s capped at 320, strides and kernels by :func:`pool_and_conv_props`, two convs per
    stage in encoder and decoder, InstanceNorm (affine, eps 1e-5), LeakyReLU, conv bias — exactly the
    fields nnU-Net writes, with ``conv_op`` etc. as dotted strings. ``input_channels`` and
    ``num_classes`` are returned beside the arch (nnU-Net keeps them out of ``arch_kwargs``).
    """
    dim = len(patch_size)
    if dim not in (2, 3) or len(spacing) != dim:
        raise ValueError(f"patch_size and spacing must both have 2 or 3 entries, got {list(patch_size)} "
                         f"and {list(spacing)}")
    strides, kernels, _ = pool_and_conv_props(spacing, patch_size)
    n_stages = len(strides)
    conv = "Conv3d" if dim == 3 else "Conv2d"
    norm = "InstanceNorm3d" if dim == 3 else "InstanceNorm2d"
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": [min(32 * 2 ** s, 320) for s in range(n_stages)],
            "conv_op": f"torch.nn.modules.conv.{conv}",
            "kernel_sizes": kernels,
            "strides": strides,
            "n_conv_per_stage": [2] * n_stages,
            "n_conv_per_stage_decoder": [2] * (n_stages - 1),
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.{norm}",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        "input_channels": int(input_channels),
        "num_classes": int(num_classes),
    }
