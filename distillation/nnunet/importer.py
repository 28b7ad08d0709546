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
from types import SimpleNamespace
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
    foreground_labels,
    read_configuration,
    read_json,
    resolve_configuration,
)
from distillation.nnunet.postprocessing import find_postprocessing, read_postprocessing
from pacsnode.errors import ModelError

__all__ = ["ImportedModel", "import_nnunet", "TransposedNetwork", "FoldEnsemble", "SliceNetwork",
           "node_mirror_axes"]

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


class SliceNetwork(nn.Module):
    """A 2-D network on a 3-D window [1, C, D, H, W] (transposed axes): each of the D slices is one batch item
    of the 2-D network, as ``nnUNetPredictor`` runs a 2d configuration slice by slice (the node's window has
    D = 1). ``encoder.strides`` are the 2-D network's total strides with 1 on the slice axis, for the exporter."""

    def __init__(self, net: nn.Module, strides_2d: Sequence[int]) -> None:
        super().__init__()
        self.slices = net
        self.encoder = SimpleNamespace(strides=[[1, *(int(s) for s in strides_2d)]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _logits(self.slices(x[0].permute(1, 0, 2, 3)))  # [D, C, H, W] -> [D, K, H, W]
        return out.permute(1, 0, 2, 3)[None]


def node_mirror_axes(allowed: Sequence[int] | None, transpose_forward: Sequence[int], dim: int = 3
                     ) -> tuple[int, ...]:
    """The checkpoint's mirroring axes (network axes, after ``transpose_forward``) as the node's axes; a 2-D
    network's axis a is the transposed volume's axis a + 1 (axis 0 holds the slices)."""
    if not allowed:
        return ()
    return tuple(int(transpose_forward[int(a) + 3 - dim]) for a in allowed)


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
    previous: ImportedModel | None = None         # a cascade's first stage (plans' previous_stage)
    previous_labels: tuple[int, ...] = ()         # its labels, fed one-hot after the image channels

    @property
    def fold(self) -> str:
        return ",".join(self.folds)

    @property
    def deployable(self) -> nn.Module:
        """The network on untransposed [1, C, z, y, x] windows (what the node feeds it)."""
        net = self.network
        if self.config.dim == 2:
            from distillation.export.onnx_export import total_stride

            net = SliceNetwork(net, total_stride(net))
        if self.config.transposed:
            return TransposedNetwork(net, self.config.transpose_forward)
        return net

    def export(self, path: str | os.PathLike, **kwargs: Any) -> Any:
        """Write the deployable ONNX with its card (see :func:`distillation.export.export_onnx`). A cascade is
        two files: the first stage as ``NAME.stage1.onnx`` beside ``NAME.onnx``, whose card's
        ``previous_stage`` names it and pins its sha256; the node loads and runs both."""
        from distillation.export import export_onnx

        card = self.card
        if self.previous is not None:
            path = Path(path)
            first = path.with_name(f"{path.stem}.stage1.onnx")
            report = self.previous.export(first, **kwargs)
            card = {**card, "previous_stage": {"model": first.name, "sha256": report.sha256,
                                               "labels": list(self.previous_labels)}}
        return export_onnx(self.deployable, card, path, **kwargs)

    def save_teacher(self, path: str | os.PathLike) -> Path:
        """Save as a distillation checkpoint (``distillation.checkpoint``) for ``distill distill``."""
        if self.previous is not None:
            raise ModelError(f"a teacher checkpoint holds one network, got the cascade {self.config.configuration!r} "
                             "(two stages); export to ONNX instead")
        if self.config.dim != 3:
            raise ModelError(f"a teacher checkpoint needs a 3-D configuration, got {self.config.configuration!r} "
                             "(a 2-D network); export to ONNX instead")
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
                  largest_component: Sequence[int | Sequence[int]] = (),
                  previous_folds: Sequence[int | str] | int | str | None = None) -> ImportedModel:
    """Rebuild an nnU-Net v2 model as ``nnUNetv2_predict`` would run it, with its model card.

    ``folds``: None = every ``fold_N`` holding ``checkpoint_name`` (nnU-Net's default), or the chosen
    ones ("all" for ``fold_all``). ``configuration``, when given, must be the checkpoints'.
    ``mirror``: test-time mirroring over the checkpoint's axes (nnU-Net's default; 2**axes network
    runs per window). ``postprocessing``: True = the folder's postprocessing.json/.pkl if present,
    a path = that file, False = none; ``largest_component`` overrides it with explicit card steps.
    A cascade (``3d_cascade_fullres``, plans' ``previous_stage``) imports its first stage from the folder
    ``Trainer__Plans__<previous_stage>`` beside ``folder`` too (``previous_folds``, by default every fold, and
    no postprocessing: ``nnUNetv2_predict`` hands the cascade the first stage's raw prediction).
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
    previous = None
    if cfg.previous_stage is not None:
        prev_folder = folder.parent / f"{first.trainer_name}__{cfg.plans_name}__{cfg.previous_stage}"
        if not prev_folder.is_dir():
            raise ModelError(f"plans.json configurations.{configuration}.previous_stage needs the first stage's "
                             f"model folder beside this one, got {cfg.previous_stage!r} and no {prev_folder.name} "
                             f"in {folder.parent}")
        previous = import_nnunet(prev_folder, previous_folds, cfg.previous_stage, checkpoint_name=checkpoint_name,
                                 name=f"{name or cfg.dataset_name} stage 1", version=version, mirror=mirror,
                                 tile_step=tile_step, postprocessing=False)
    nets = [_network(cfg, ck) for ck in checkpoints]
    network = nets[0] if len(nets) == 1 else FoldEnsemble(nets).eval()
    fold_names = tuple(ck.fold for ck in checkpoints)
    axes = node_mirror_axes(first.mirror_axes, cfg.transpose_forward, cfg.dim)
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
                    **({"postprocessing": pp_file.name} if pp_file is not None else {}),
                    **({"previous_stage": {"configuration": cfg.previous_stage, "folds": list(previous.folds)}}
                       if previous is not None else {})},
    )
    card = validate_card(card)
    log.info("imported nnU-Net %s %s %s: %s, %d parameters per fold, mirroring %s", cfg.dataset_name,
             configuration, what, cfg.network_class_name.rsplit(".", 1)[-1], params, list(axes) if mirror else "off")
    return ImportedModel(network=network, config=cfg, card=card, folds=fold_names, trainer_name=first.trainer_name,
                         source=folder, checkpoint_name=checkpoint_name, inference_mirror_axes=axes,
                         postprocessing_file=pp_file, extra={"epoch": first.epoch}, previous=previous,
                         previous_labels=tuple(foreground_labels(dataset)) if previous is not None else ())
