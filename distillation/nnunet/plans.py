"""Typed reading of an nnU-Net v2 trained-model folder's plans.json and dataset.json.

Only what deployment needs is read: the configuration's architecture (current
``architecture`` form and the pre-2.4 ``UNet_class_name`` form), spacing, patch size, axis
transposition, normalization schemes with the CT intensity properties, labels and regions.
Errors name the file and key, the value received and what is valid.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacsnode.errors import ModelError

__all__ = ["NnunetConfiguration", "read_json", "resolve_configuration", "card_normalization",
           "card_labels", "read_configuration", "foreground_labels"]

_NORMALIZATION = {
    "ZScoreNormalization": "zscore",
    "CTNormalization": "ct",
    "NoNormalization": "none",
    "RescaleTo01Normalization": "rescale01",
    "RGBTo01Normalization": "rgb01",
}


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"an nnU-Net model folder must contain {path.name}, got none at {path}") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} must be valid JSON, got a parse error: {exc}") from None


def resolve_configuration(plans: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``plans["configurations"][name]`` with ``inherits_from`` chains merged (parent first)."""
    configs = plans.get("configurations") or {}
    if name not in configs:
        raise ModelError(f"plans.json configuration must be one of {sorted(configs)}, got {name!r}")
    chain, seen = [], set()
    current: str | None = name
    while current is not None:
        if current in seen or current not in configs:
            raise ModelError(f"plans.json configuration {name!r} inherits from a missing or cyclic "
                             f"configuration {current!r}; valid: {sorted(configs)}")
        seen.add(current)
        chain.append(configs[current])
        current = configs[current].get("inherits_from")
    merged: dict[str, Any] = {}
    for cfg in reversed(chain):
        merged.update(copy.deepcopy(cfg))
    merged.pop("inherits_from", None)
    return merged


def _architecture(cfg: Mapping[str, Any], dim: int) -> tuple[str, dict[str, Any]]:
    arch = cfg.get("architecture")
    if arch is not None:
        kwargs = dict(arch["arch_kwargs"])
        kwargs["_kw_requires_import"] = list(arch.get("_kw_requires_import", ()))
        return str(arch["network_class_name"]), kwargs
    # nnU-Net < 2.4 plans: the topology lives at the configuration level.
    if "UNet_class_name" not in cfg:
        raise ModelError("plans.json configuration must have an 'architecture' entry (or the older "
                         f"'UNet_class_name' fields), got keys {sorted(cfg)}")
    conv_kernels = cfg["conv_kernel_sizes"]
    n = len(conv_kernels)
    base, cap = int(cfg["UNet_base_num_features"]), int(cfg["unet_max_num_features"])
    suffix = f"{dim}d"
    kwargs = {
        "n_stages": n,
        "features_per_stage": [min(base * 2 ** i, cap) for i in range(n)],
        "conv_op": f"torch.nn.modules.conv.Conv{suffix}",
        "kernel_sizes": conv_kernels,
        "strides": cfg["pool_op_kernel_sizes"],
        "n_conv_per_stage_decoder": cfg["n_conv_per_stage_decoder"],
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{suffix}",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    cls = str(cfg["UNet_class_name"])
    key = "n_blocks_per_stage" if cls.endswith("ResidualEncoderUNet") else "n_conv_per_stage"
    kwargs[key] = cfg["n_conv_per_stage_encoder"]
    return cls, kwargs


def card_normalization(cfg: Mapping[str, Any], plans: Mapping[str, Any], n_channels: int) -> list[dict[str, Any]]:
    """Card normalization entries from ``normalization_schemes`` / ``use_mask_for_norm`` and, for CT,
    ``foreground_intensity_properties_per_channel`` (clip to percentile_00_5..percentile_99_5, mean, std)."""
    schemes = cfg.get("normalization_schemes")
    if not isinstance(schemes, list) or len(schemes) != n_channels:
        raise ModelError(f"plans.json normalization_schemes must list one scheme per channel ({n_channels}), "
                         f"got {schemes!r}")
    masks = cfg.get("use_mask_for_norm") or [False] * n_channels
    props = plans.get("foreground_intensity_properties_per_channel") or {}
    out = []
    for c, scheme in enumerate(schemes):
        kind = _NORMALIZATION.get(str(scheme))
        if kind is None:
            raise ModelError(f"plans.json normalization_schemes[{c}] must be one the node implements "
                             f"({', '.join(_NORMALIZATION)}), got {scheme!r}")
        if kind == "zscore":
            out.append({"scheme": "zscore", "use_nonzero_mask": bool(masks[c])})
        elif kind == "ct":
            p = props.get(str(c)) or props.get(c)
            if not p:
                raise ModelError(f"plans.json foreground_intensity_properties_per_channel must have channel "
                                 f"'{c}' for CTNormalization, got keys {sorted(props)}")
            out.append({"scheme": "ct", "clip": [float(p["percentile_00_5"]), float(p["percentile_99_5"])],
                        "mean": float(p["mean"]), "std": max(float(p["std"]), 1e-8)})
        else:
            out.append({"scheme": kind})
    return out


def card_labels(dataset: Mapping[str, Any]) -> tuple[str, dict[str, int], int, dict[str, list[int]]]:
    """(activation, label name → painted value in output-channel order, network output channels,
    region name → the labels it is the union of).

    Softmax: every non-background label; ``ignore`` (nnU-Net's ignore label) is no output. Region-based
    (a label given as a list of two or more labels, as nnU-Net's ``LabelManager`` decides): one sigmoid
    output per non-background region in dataset.json order, painted with ``regions_class_order``'s
    value for that output, later outputs over earlier ones.
    """
    labels = dataset.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise ModelError(f"dataset.json labels must be a non-empty table, got {labels!r}")
    ignore = labels.get("ignore")
    if ignore is not None and (isinstance(ignore, (bool, list, tuple)) or not isinstance(ignore, int)):
        raise ModelError(f"dataset.json labels.ignore must be one integer label (nnU-Net's ignore label), "
                         f"got {ignore!r}")
    entries = {str(k): v for k, v in labels.items() if k != "ignore"}
    region_based = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in entries.values())
    if not region_based:
        named = {k: int(v[0]) if isinstance(v, (list, tuple)) else int(v) for k, v in entries.items()}
        values = sorted(named.values())
        if values != list(range(len(values))):
            raise ModelError(f"dataset.json labels must be 0..N without gaps for a softmax model, got {values}")
        if ignore is not None and ignore != len(values):
            raise ModelError(f"dataset.json labels.ignore must be the highest label ({len(values)}), as nnU-Net "
                             f"requires, got {ignore}")
        return "softmax", {k: v for k, v in named.items() if v != 0}, len(values), {}
    order = dataset.get("regions_class_order")
    regions = {k: [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])] for k, v in entries.items()}
    regions = {k: v for k, v in regions.items() if set(v) != {0}}
    if not isinstance(order, list) or len(order) != len(regions):
        raise ModelError("dataset.json regions_class_order must give one value per region "
                         f"({len(regions)}: {list(regions)}), got {order!r}")
    painted = [int(v) for v in order]
    if len(set(painted)) != len(painted) or 0 in painted:
        raise ModelError(f"dataset.json regions_class_order must hold distinct label values (not 0), got {order}")
    for name, members in regions.items():
        if not set(members) <= set(painted):
            raise ModelError(f"dataset.json labels.{name} must be a union of the painted labels "
                             f"(regions_class_order {painted}), got {members}")
    return "sigmoid", dict(zip(regions, painted, strict=True)), len(regions), regions


def foreground_labels(dataset: Mapping[str, Any]) -> list[int]:
    """nnU-Net's ``LabelManager.foreground_labels``: every label value in dataset.json (regions' members too),
    ascending, without 0 and the ignore label; a cascade feeds its previous stage one-hot over these."""
    values = set()
    for k, v in (dataset.get("labels") or {}).items():
        if k != "ignore":
            values.update(int(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    return sorted(values - {0})


@dataclass(frozen=True)
class NnunetConfiguration:
    """What the node needs from plans.json + dataset.json for one configuration."""

    dataset_name: str
    plans_name: str
    configuration: str
    network_class_name: str
    arch_kwargs: dict[str, Any]
    input_channels: int
    num_classes: int
    channel_names: tuple[str, ...]
    activation: str
    labels: dict[str, int]              # name → painted value, in output-channel order
    regions: dict[str, list[int]]       # region-based models: name → the labels it is the union of
    spacing: tuple[float | None, ...]   # untransposed (z, y, x); None: a 2-D model's slice axis (source spacing)
    patch_size: tuple[int, ...]         # untransposed (z, y, x); 1 on a 2-D model's slice axis
    transpose_forward: tuple[int, ...]
    normalization: tuple[dict[str, Any], ...]
    dim: int = 3                        # the network's spatial dimensions (2: nnU-Net's 2d, run slice by slice)
    previous_stage: str | None = None   # a cascade's first-stage configuration (plans' previous_stage)

    @property
    def transposed(self) -> bool:
        return list(self.transpose_forward) != sorted(self.transpose_forward)


def _untranspose(values: Sequence[Any], transpose_forward: Sequence[int]) -> list[Any]:
    # transposed[i] = original[transpose_forward[i]]  ⇒  original[transpose_forward[i]] = transposed[i]
    out: list[Any] = [None] * len(values)
    for i, axis in enumerate(transpose_forward):
        out[axis] = values[i]
    return out


def read_configuration(plans: Mapping[str, Any], dataset: Mapping[str, Any], configuration: str
                       ) -> NnunetConfiguration:
    cfg = resolve_configuration(plans, configuration)
    patch = list(cfg.get("patch_size") or [])
    spacing = list(cfg.get("spacing") or [])
    dim = len(patch)
    if dim not in (2, 3) or len(spacing) != dim:
        raise ModelError(f"configuration {configuration!r} must be 2-D or 3-D (patch_size and spacing with two or "
                         f"three entries each) for the node, got patch_size {patch} and spacing {spacing}")
    if dim == 2:  # nnU-Net runs a 2-D network over the slices of the transposed volume's first axis
        patch, spacing = [1, *patch], [None, *spacing]
    transpose = list(plans.get("transpose_forward", [0, 1, 2]))
    if sorted(transpose) != [0, 1, 2]:
        raise ModelError(f"plans.json transpose_forward must be a permutation of [0, 1, 2], got {transpose}")
    channels = dataset.get("channel_names") or dataset.get("modality")
    if not isinstance(channels, Mapping) or not channels:
        raise ModelError(f"dataset.json channel_names must be a non-empty table, got {channels!r}")
    channel_names = tuple(str(channels[k]) for k in sorted(channels, key=lambda k: int(k)))
    activation, labels, num_classes, regions = card_labels(dataset)
    class_name, arch_kwargs = _architecture(cfg, dim)
    return NnunetConfiguration(
        dataset_name=str(plans.get("dataset_name", dataset.get("name", "nnunet"))),
        plans_name=str(plans.get("plans_name", "nnUNetPlans")),
        configuration=configuration,
        network_class_name=class_name,
        arch_kwargs=arch_kwargs,
        input_channels=len(channel_names) + (len(foreground_labels(dataset)) if cfg.get("previous_stage") else 0),
        num_classes=num_classes,
        channel_names=channel_names,
        activation=activation,
        labels=labels,
        regions=regions,
        spacing=tuple(None if s is None else float(s) for s in _untranspose(spacing, transpose)),
        patch_size=tuple(int(p) for p in _untranspose(patch, transpose)),
        transpose_forward=tuple(int(t) for t in transpose),
        normalization=tuple(card_normalization(cfg, plans, len(channel_names))),
        dim=dim,
        previous_stage=cfg.get("previous_stage") or None,
    )
