"""The two jobs the CLI runs, composed from data, networks, losses and the loop.

* :func:`train_teacher`: dataset → plan + cache → nnU-Net default architecture (preset
  overrides) → Dice+CE with deep supervision → ``out/checkpoint_final.pt``.
* :func:`distill`: teacher checkpoint + width factor + KD recipe → student with KD heads
  (optimized together) → ``out/checkpoint_final.pt`` (student weights; heads kept apart); with a
  :class:`~distillation.train.budget.LabelBudget`, on unlabelled images and / or N labelled cases.

The student reuses the teacher's plan (spacing, normalization, patch), so both run through
the node's inference unchanged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from distillation.checkpoint import load_checkpoint
from distillation.config import NetworkConfig, Preset
from distillation.data.loader import PatchBatches, validation_patches
from distillation.data.plan import DataPlan
from distillation.data.preprocess import load_preprocessed, preprocess_dataset
from distillation.losses.kd import KDConfig, KDHeads
from distillation.losses.objective import Objective
from distillation.networks import build_network, count_parameters, default_plans_arch
from distillation.train.budget import LabelBudget, prepare_budget_data, split_cases
from distillation.train.distributed import DistContext, init_distributed, shutdown_distributed
from distillation.train.loop import RunSpec, fit, read_resume_state
from distillation.train.models import ModelPair, StudentWithHeads
from distillation.train.schedule import build_optimizer
from pacsnode.errors import ConfigError

__all__ = ["teacher_architecture", "prepare_data", "train_teacher", "distill"]

log = logging.getLogger(__name__)

_RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6)  # nnU-Net ResEnc M


def teacher_architecture(net: NetworkConfig, plan: DataPlan) -> tuple[str, dict[str, Any]]:
    """(class name, arch_kwargs): nnU-Net's default plan for the patch, with the preset's overrides."""
    arch = default_plans_arch(plan.patch_size, plan.target_spacing, len(plan.channel_names),
                              plan.num_classes)
    kw = dict(arch["arch_kwargs"])
    n = kw["n_stages"]
    if net.max_stages and net.max_stages < n:
        n = net.max_stages
        for key in ("kernel_sizes", "strides", "n_conv_per_stage"):
            kw[key] = kw[key][:n]
        kw["n_conv_per_stage_decoder"] = kw["n_conv_per_stage_decoder"][: n - 1]
        kw["n_stages"] = n
    kw["features_per_stage"] = [min(net.base_features * 2**s, net.max_features) for s in range(n)]
    if net.arch == "ResidualEncoderUNet":
        kw["n_blocks_per_stage"] = list(_RESENC_BLOCKS[:n]) + [6] * max(0, n - len(_RESENC_BLOCKS))
        del kw["n_conv_per_stage"]
        kw["n_conv_per_stage_decoder"] = [1] * (n - 1)
        kw["block"] = "BasicBlockD"
    return net.arch, kw


def prepare_data(preset: Preset, dataset: Path, out_dir: Path, ctx: DistContext,
                 plan: DataPlan | None = None) -> tuple[DataPlan, PatchBatches, list, dict[str, list[str]]]:
    """Preprocess (rank 0; the others wait), split, and build the patch stream and validation set."""
    cache = out_dir / "preprocessed"
    if ctx.is_main:
        plan = preprocess_dataset(dataset, cache, tuple(preset.data.patch_size), plan)  # type: ignore[arg-type]
    ctx.barrier()
    plan = DataPlan.load(cache / "plan.json")
    ids = sorted(p.name[:-4] for p in cache.glob("*.npz") if not p.name.endswith(".tmp.npz"))
    train_ids, val_ids = split_cases(ids, preset.data.val_fraction)
    d = preset.data
    stream = PatchBatches(load_preprocessed(cache, train_ids), plan.patch_size, d.batch_size,
                          d.batches_per_epoch, preset.augment, d.oversample_foreground,
                          seed=preset.train.seed, rank=ctx.rank)
    val = validation_patches(load_preprocessed(cache, val_ids), plan.patch_size, d.val_patches_per_case)
    return plan, stream, val, {"train": train_ids, "val": val_ids}


def _card(plan: DataPlan, name: str, dataset: Path, provenance: dict[str, Any]) -> dict[str, Any]:
    """The model card a checkpoint carries (``distill export`` embeds it as is)."""
    from distillation.export.card import make_card

    return make_card(name=name, version="0.1.0", channel_names=plan.channel_names, labels=plan.labels,
                     target_spacing=plan.target_spacing, patch_size=plan.patch_size,
                     normalization=plan.normalization, crop_to_nonzero=plan.crop_to_nonzero,
                     description=f"Trained by distill on {dataset.name}.",
                     provenance={"dataset": dataset.name, **provenance})


def _run(preset: Preset, out_dir: Path, pair: ModelPair, spec: RunSpec, stream: PatchBatches, val: list,
         ctx: DistContext, resume: bool) -> dict[str, Any]:
    if preset.train.threads:
        torch.set_num_threads(preset.train.threads)
    objective = Objective(spec.num_classes, preset.kd, ddp=ctx.is_distributed, heads=pair.model.heads)
    # student AND KD heads, unless the heads are fixed (adapters = "fixed": no gradient, not optimized)
    optimizer = build_optimizer([p for p in pair.model.parameters() if p.requires_grad], preset.optim)
    state = read_resume_state(out_dir) if resume else None
    if resume and state is None:
        log.warning("--resume: no %s checkpoint in %s, starting from epoch 0", "latest", out_dir)
    return fit(pair, objective, optimizer, stream, val, preset, out_dir, spec, ctx, state)


def train_teacher(preset: Preset, dataset: str | Path, out_dir: str | Path, resume: bool = False,
                  ctx: DistContext | None = None) -> dict[str, Any]:
    """Train a teacher from scratch; returns the run summary."""
    own_ctx = ctx is None
    ctx = ctx or init_distributed()
    try:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        preset = replace(preset, kd=KDConfig())  # no teacher, no KD
        plan, stream, val, split = prepare_data(preset, Path(dataset), out, ctx)
        cls_name, arch_kwargs = teacher_architecture(preset.network, plan)
        torch.manual_seed(preset.train.seed)
        net = build_network(cls_name, arch_kwargs, len(plan.channel_names), plan.num_classes,
                            min_features=preset.network.min_features,
                            deep_supervision=preset.network.deep_supervision)
        spec = RunSpec(cls_name, arch_kwargs, len(plan.channel_names), plan.num_classes, 1.0,
                       preset.network.min_features,
                       card=_card(plan, f"{preset.name}-teacher", Path(dataset),
                                  {"width_factor": 1.0, "parameters": count_parameters(net)}),
                       extra={"plan": plan.to_json(), "split": split, "role": "teacher",
                              "parameters": count_parameters(net)})
        _write_run_info(out, ctx, spec)
        return _run(preset, out, ModelPair(StudentWithHeads(net)), spec, stream, val, ctx, resume)
    finally:
        if own_ctx:
            shutdown_distributed(ctx)


def distill(preset: Preset, teacher_checkpoint: str | Path, width_factor: float, dataset: str | Path | None,
            out_dir: str | Path, resume: bool = False, ctx: DistContext | None = None,
            budget: LabelBudget | None = None) -> dict[str, Any]:
    """Distil a width-``width_factor`` student from a teacher checkpoint with ``preset.kd``; with a
    ``budget``, on its unlabelled images and its labelled cases only (``dataset`` may then be None)."""
    if budget is not None:
        budget.check(None if dataset is None else Path(dataset), preset.kd.needs_teacher)
    elif dataset is None:
        raise ConfigError("distill needs a dataset or a label budget with unlabelled images, got neither")
    own_ctx = ctx is None
    ctx = ctx or init_distributed()
    try:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        ck = load_checkpoint(teacher_checkpoint)
        teacher = ck.build_network(deep_supervision=False)
        plan = DataPlan.from_json(ck.extra["plan"]) if "plan" in ck.extra else None
        if plan is not None and tuple(plan.patch_size) != tuple(preset.data.patch_size):
            log.warning("the student uses the teacher's plan: patch %s, not the preset's %s",
                        list(plan.patch_size), list(preset.data.patch_size))
        source = Path(dataset) if dataset is not None else Path(budget.unlabelled)  # type: ignore[union-attr, arg-type]
        if budget is None:
            plan, stream, val, split = prepare_data(preset, source, out, ctx, plan)
        else:
            plan, stream, val, split = prepare_budget_data(preset, budget, None if dataset is None else source,
                                                           out, ctx, plan, ck.card)
        torch.manual_seed(preset.train.seed)
        student = build_network(ck.network_class_name, ck.arch_kwargs, ck.input_channels, ck.num_classes,
                                width_factor=width_factor, min_features=ck.min_features,
                                deep_supervision=preset.network.deep_supervision)
        heads = None
        if preset.kd.needs_features:
            heads = KDHeads(student.features_per_stage, teacher.features_per_stage,
                            context=preset.kd.ca and preset.kd.ca_form == "gc")
            if preset.kd.adapters == "fixed":
                heads.fix()
        provenance = {"teacher": str(teacher_checkpoint), "width_factor": width_factor,
                      "kd_method": preset.kd.recipe, "parameters": count_parameters(student)}
        if budget is not None:
            provenance.update(labelled_cases=len(split["train"]), unlabelled_cases=len(split["unlabelled"]))
        spec = RunSpec(ck.network_class_name, ck.arch_kwargs, ck.input_channels, ck.num_classes,
                       width_factor, ck.min_features,
                       card=_card(plan, f"{preset.name}-student-w{width_factor:g}", source, provenance),
                       extra={"plan": plan.to_json(), "split": split, "role": "student",
                              "kd": preset.kd.recipe, "parameters": count_parameters(student)})
        _write_run_info(out, ctx, spec)
        return _run(preset, out, ModelPair(StudentWithHeads(student, heads), teacher), spec, stream, val,
                    ctx, resume)
    finally:
        if own_ctx:
            shutdown_distributed(ctx)


def _write_run_info(out: Path, ctx: DistContext, spec: RunSpec) -> None:
    if ctx.is_main:
        info = {"network_class_name": spec.network_class_name, "arch_kwargs": spec.arch_kwargs,
                "width_factor": spec.width_factor, **{k: v for k, v in spec.extra.items()}}
        (out / "run.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")


