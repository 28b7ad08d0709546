"""Import an nnU-Net v2 trained model folder as one deployable ONNX model (and a teacher).

Folder layout (nnU-Net's ``nnUNet_results/DatasetXXX/Trainer__Plans__Configuration``)::

    plans.json  dataset.json  fold_0/checkpoint_final.pth ... fold_4/  [crossval_results_folds_0_1_2_3_4/postprocessing.pkl]

As ``nnUNetPredictor`` does: the configuration and trainer come from the checkpoints' ``init_args``
and ``trainer_name`` (checked against the folder name and the caller, see
:mod:`distillation.nnunet.checkpoints`), every fold that holds the checkpoint is used unless folds
are chosen, test-time mirroring is on over the checkpoint's ``inference_allowed_mirroring_axes``
(mapped through ``transpose_forward`` onto the node's axes), and the postprocessing chosen by
``nnUNetv2_find_best_configuration`` goes into the card when the folder has it.

Ensembles are one ONNX graph: :class:`FoldEnsemble` runs every fold on the window and averages the
logits, which is what nnU-Net's per-fold sliding windows summed and divided by the fold count give
(the Gaussian-weighted aggregation is linear in the logits). Checkpoints are pickles
(``torch.load``): only import folders you trust.
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
from distillation.nnunet.checkpoints import FoldCheckpoint, read_fold_checkpoints
from distillation.nnunet.fidelity import check_plans
from distillation.nnunet.plans import (
    NnunetConfiguration,
    read_configuration,
    read_json,
    resolve_configuration,
)
from distillation.nnunet.postprocessing import find_postprocessing, read_postprocessing
from pacsnode.errors import ModelError

__all__ = ["ImportedModel", "import_nnunet", "TransposedNetwork", "FoldEnsemble", "node_mirror_axes"]

log = logging.getLogger(__name__)


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


class TransposedNetwork(nn.Module):
    """Runs a network trained on nnU-Net-transposed axes on untransposed [1, C, z, y, x] input."""

    def __init__(self, net: nn.Module, transpose_forward: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.transpose_forward = [int(t) for t in transpose_forward]
        self.forward_perm = [0, 1] + [2 + int(t) for t in transpose_forward]
        backward = [int(i) for i in sorted(range(len(transpose_forward)), key=lambda i: transpose_forward[i])]
        self.backward_perm = [0, 1] + [2 + b for b in backward]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(self.net(x.permute(*self.forward_perm))).permute(*self.backward_perm)


class FoldEnsemble(nn.Module):
    """The folds' logits on one window, summed in fold order and divided by their number (nnU-Net's order)."""

    def __init__(self, folds: Sequence[nn.Module]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(folds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _logits(self.folds[0](x))
        for net in self.folds[1:]:
            out = out + _logits(net(x))
        return out / len(self.folds)


def node_mirror_axes(allowed: Sequence[int] | None, transpose_forward: Sequence[int]) -> tuple[int, ...]:
    """The checkpoint's mirroring axes (network axes, after ``transpose_forward``) as the node's axes."""
    if not allowed:
        return ()
    return tuple(int(transpose_forward[int(a)]) for a in allowed)


@dataclass(frozen=True)
class ImportedModel:
    """The rebuilt nnU-Net network(s) (eval, deep supervision off) and the deployment facts."""

    network: nn.Module                   # one fold's network, or a FoldEnsemble of them
    config: NnunetConfiguration
    card: dict[str, Any]
    folds: tuple[str, ...]
    trainer_name: str
    source: Path
    checkpoint_name: str = "checkpoint_final.pth"
    inference_mirror_axes: tuple[int, ...] = ()   # the node's axes
    postprocessing_file: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fold(self) -> str:
        return ",".join(self.folds)

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
        if len(self.folds) != 1:
            raise ModelError(f"a teacher checkpoint holds one network, got folds {list(self.folds)}; import one "
                             "fold (--fold N) for the teacher")
        card = {k: v for k, v in self.card.items()}
        return save_checkpoint(path, self.network, network_class_name=self.config.network_class_name,
                               arch_kwargs=self.config.arch_kwargs, input_channels=self.config.input_channels,
                               num_classes=self.config.num_classes, width_factor=1.0, card=card,
                               extra={"source": "nnU-Net v2", "trainer": self.trainer_name, "fold": self.fold,
                                      "configuration": self.config.configuration})


def _clean_weights(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in weights.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _network(cfg: NnunetConfiguration, ck: FoldCheckpoint) -> nn.Module:
    net = build_network(cfg.network_class_name, cfg.arch_kwargs, cfg.input_channels, cfg.num_classes,
                        deep_supervision=False, initialize=False)
    try:
        net.load_state_dict(_clean_weights(ck.weights), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{ck.path} weights must match the plans' {cfg.network_class_name} exactly "
                         f"(strict loading), got: {first} ...") from None
    return net.eval()


def _folds_arg(folds: Sequence[int | str] | int | str | None) -> list[str] | None:
    if folds is None:
        return None
    if isinstance(folds, (int, str)):
        return [str(folds)]
    return [str(f) for f in folds]


def import_nnunet(folder: str | os.PathLike, folds: Sequence[int | str] | int | str | None = None,
                  configuration: str | None = None, *, checkpoint_name: str = "checkpoint_final.pth",
                  name: str | None = None, version: str = "1.0.0", description: str | None = None,
                  mirror: bool = True, tile_step: float = 0.5,
                  postprocessing: str | os.PathLike | bool = True,
                  largest_component: Sequence[int | Sequence[int]] = ()) -> ImportedModel:
    """Rebuild an nnU-Net v2 model as ``nnUNetv2_predict`` would run it, with its model card.

    ``folds``: None = every ``fold_N`` holding ``checkpoint_name`` (nnU-Net's default), or the chosen
    ones ("all" for ``fold_all``). ``configuration``, when given, must be the checkpoints'.
    ``mirror``: test-time mirroring over the checkpoint's axes (nnU-Net's default; 2**axes network
    runs per window). ``postprocessing``: True = the folder's postprocessing.json/.pkl if present,
    a path = that file, False = none; ``largest_component`` overrides it with explicit card steps.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"an nnU-Net model folder must be a directory, got {str(folder)!r}")
    plans = read_json(folder / "plans.json")
    dataset = read_json(folder / "dataset.json")
    checkpoints = read_fold_checkpoints(folder, _folds_arg(folds), checkpoint_name, configuration)
    first = checkpoints[0]
    configuration = first.configuration
    check_plans(plans, resolve_configuration(plans, configuration), configuration)
    cfg = read_configuration(plans, dataset, configuration)
    nets = [_network(cfg, ck) for ck in checkpoints]
    network = nets[0] if len(nets) == 1 else FoldEnsemble(nets).eval()
    fold_names = tuple(ck.fold for ck in checkpoints)
    axes = node_mirror_axes(first.mirror_axes, cfg.transpose_forward)
    pp_file: Path | None = None
    steps: list[Any] = [list(s) if not isinstance(s, int) else s for s in largest_component]
    if not steps and postprocessing is not False:
        pp_file = find_postprocessing(folder, fold_names) if postprocessing is True else Path(postprocessing)
        if pp_file is not None:
            if not pp_file.is_file():
                raise ModelError(f"postprocessing must be nnU-Net's postprocessing.json or .pkl, got no file at "
                                 f"{pp_file}")
            steps = read_postprocessing(pp_file, list(cfg.labels.values()))
    params = count_parameters(nets[0])
    what = f"fold {fold_names[0]}" if len(fold_names) == 1 else f"folds {', '.join(fold_names)} (logits averaged)"
    card = make_card(
        name=name or cfg.dataset_name,
        version=version,
        description=description or (f"nnU-Net v2 {first.trainer_name} / {cfg.plans_name} / {configuration}, "
                                    f"{what}, imported from {folder.name}"),
        channel_names=cfg.channel_names,
        labels=cfg.labels,
        regions=cfg.regions,
        target_spacing=cfg.spacing,
        patch_size=cfg.patch_size,
        normalization=cfg.normalization,
        crop_to_nonzero=True,  # nnU-Net's DefaultPreprocessor always crops to the nonzero region
        tile_step=tile_step,
        mirror_axes=axes if mirror else (),
        aggregation="float16",  # nnUNetPredictor sums the windows in float16, on the CPU too
        activation=cfg.activation,
        largest_component=steps,
        provenance={"teacher": f"nnU-Net v2 {first.trainer_name} {cfg.plans_name} {configuration}",
                    "folds": list(fold_names), "checkpoint": checkpoint_name,
                    "width_factor": 1.0, "kd_method": "none", "parameters": params * len(nets),
                    "parameters_per_fold": params, "dataset": cfg.dataset_name,
                    "source": "distill import-nnunet",
                    **({"postprocessing": pp_file.name} if pp_file is not None else {})},
    )
    card = validate_card(card)
    log.info("imported nnU-Net %s %s %s: %s, %d parameters per fold, mirroring %s", cfg.dataset_name,
             configuration, what, cfg.network_class_name.rsplit(".", 1)[-1], params, list(axes) if mirror else "off")
    return ImportedModel(network=network, config=cfg, card=card, folds=fold_names, trainer_name=first.trainer_name,
                         source=folder, checkpoint_name=checkpoint_name, inference_mirror_axes=axes,
                         postprocessing_file=pp_file, extra={"epoch": first.epoch})
