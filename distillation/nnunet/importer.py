"""Import an nnU-Net v2 trained model folder as a teacher and as a deployable ONNX model.

Folder layout (nnU-Net's ``nnUNet_results/DatasetXXX/Trainer__Plans__Config``)::

    plans.json  dataset.json  fold_0/checkpoint_final.pth  (fold_all/ for fold "all")

The checkpoint (``torch.load``, pickled: only import folders you trust) holds ``network_weights``
and ``init_args`` / ``trainer_name``. The network is rebuilt from
``plans["configurations"][cfg]["architecture"]`` with :func:`distillation.networks.build_network`
and the weights are loaded with ``strict=True``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillation.checkpoint import save_checkpoint
from distillation.export.card import make_card, validate_card
from distillation.networks import build_network, count_parameters
from distillation.nnunet.plans import NnunetConfiguration, read_configuration, read_json
from pacsnode.errors import ModelError

__all__ = ["ImportedModel", "import_nnunet", "TransposedNetwork"]

log = logging.getLogger(__name__)


class TransposedNetwork(nn.Module):
    """Runs a network trained on nnU-Net-transposed axes on untransposed [1, C, z, y, x] input."""

    def __init__(self, net: nn.Module, transpose_forward: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.forward_perm = [0, 1] + [2 + int(t) for t in transpose_forward]
        backward = [int(i) for i in sorted(range(len(transpose_forward)), key=lambda i: transpose_forward[i])]
        self.backward_perm = [0, 1] + [2 + b for b in backward]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x.permute(*self.forward_perm))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out.permute(*self.backward_perm)


@dataclass(frozen=True)
class ImportedModel:
    """The rebuilt nnU-Net network (eval, deep supervision off) and its deployment facts."""

    network: nn.Module
    config: NnunetConfiguration
    card: dict[str, Any]
    fold: str
    trainer_name: str
    source: Path
    inference_mirror_axes: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def deployable(self) -> nn.Module:
        """The network on untransposed axes (what the node feeds it)."""
        if self.config.transposed:
            return TransposedNetwork(self.network, self.config.transpose_forward)
        return self.network

    def export(self, path: str | os.PathLike, **kwargs: Any) -> Any:
        """Write the deployable ONNX with its card (see :func:`distillation.export.export_onnx`)."""
        from distillation.export import export_onnx

        return export_onnx(self.deployable, self.card, path, **kwargs)

    def save_teacher(self, path: str | os.PathLike) -> Path:
        """Save as a distillation checkpoint (``distillation.checkpoint``) for ``distill distill``."""
        if self.config.transposed:
            raise ModelError("a teacher checkpoint needs untransposed axes, got plans.json transpose_forward "
                             f"{list(self.config.transpose_forward)}; export to ONNX instead")
        card = {k: v for k, v in self.card.items()}
        return save_checkpoint(path, self.network, network_class_name=self.config.network_class_name,
                               arch_kwargs=self.config.arch_kwargs, input_channels=self.config.input_channels,
                               num_classes=self.config.num_classes, width_factor=1.0, card=card,
                               extra={"source": "nnU-Net v2", "trainer": self.trainer_name, "fold": self.fold,
                                      "configuration": self.config.configuration})


def _fold_dir(folder: Path, fold: int | str) -> Path:
    name = f"fold_{fold}"
    path = folder / name
    if not path.is_dir():
        found = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
        raise ModelError(f"an nnU-Net model folder must contain {name}/ for fold {fold!r}, got "
                         f"{found or 'no fold folders'} in {folder}")
    return path


def _clean_weights(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in weights.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def import_nnunet(folder: str | os.PathLike, fold: int | str = 0, configuration: str = "3d_fullres", *,
                  checkpoint_name: str = "checkpoint_final.pth", name: str | None = None,
                  version: str = "1.0.0", description: str | None = None,
                  mirror_axes: Sequence[int] = (), tile_step: float = 0.5,
                  largest_component: Sequence[int] = ()) -> ImportedModel:
    """Rebuild an nnU-Net v2 model with strictly loaded weights and build its model card.

    ``mirror_axes`` defaults to none (the node's speed); nnU-Net's own predictor mirrors on all
    axes the trainer allows (``ImportedModel.inference_mirror_axes``), pass those for full parity.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"an nnU-Net model folder must be a directory, got {str(folder)!r}")
    plans = read_json(folder / "plans.json")
    dataset = read_json(folder / "dataset.json")
    cfg = read_configuration(plans, dataset, configuration)
    ckpt_path = _fold_dir(folder, fold) / checkpoint_name
    if not ckpt_path.is_file():
        raise ModelError(f"fold {fold} must contain {checkpoint_name}, got none at {ckpt_path}")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, Mapping) or "network_weights" not in checkpoint:
        keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ModelError(f"{ckpt_path.name} must be an nnU-Net checkpoint with 'network_weights', got {keys}")
    net = build_network(cfg.network_class_name, cfg.arch_kwargs, cfg.input_channels, cfg.num_classes,
                        deep_supervision=False, initialize=False)
    try:
        net.load_state_dict(_clean_weights(checkpoint["network_weights"]), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{ckpt_path} weights must match the plans' {cfg.network_class_name} exactly "
                         f"(strict loading), got: {first} ...") from None
    net.eval()
    trainer = str(checkpoint.get("trainer_name", "nnUNetTrainer"))
    allowed = tuple(int(a) for a in (checkpoint.get("inference_allowed_mirroring_axes") or ()))
    params = count_parameters(net)
    card = make_card(
        name=name or cfg.dataset_name,
        version=version,
        description=description or (f"nnU-Net v2 {trainer} / {cfg.plans_name} / {configuration}, fold {fold}, "
                                    f"imported from {folder.name}"),
        channel_names=cfg.channel_names,
        labels=cfg.labels,
        target_spacing=cfg.spacing,
        patch_size=cfg.patch_size,
        normalization=cfg.normalization,
        crop_to_nonzero=True,  # nnU-Net's DefaultPreprocessor always crops to the nonzero region
        tile_step=tile_step,
        mirror_axes=mirror_axes,
        activation=cfg.activation,
        largest_component=largest_component,
        provenance={"teacher": f"nnU-Net v2 {trainer} {cfg.plans_name} {configuration} fold {fold}",
                    "width_factor": 1.0, "kd_method": "none", "parameters": params,
                    "dataset": cfg.dataset_name, "source": "distill import-nnunet"},
    )
    card = validate_card(card)
    log.info("imported nnU-Net %s %s fold %s: %s, %d parameters", cfg.dataset_name, configuration, fold,
             cfg.network_class_name.rsplit(".", 1)[-1], params)
    return ImportedModel(network=net, config=cfg, card=card, fold=str(fold), trainer_name=trainer,
                         source=folder, inference_mirror_axes=allowed,
                         extra={"epoch": checkpoint.get("current_epoch")})
