"""The one training loop, for teachers and students alike.

It composes what it is given: a :class:`~distillation.train.models.ModelPair` (student with
its KD heads, optional frozen teacher), an :class:`~distillation.losses.Objective`, an
optimizer, a patch-batch stream and the preset's schedule. Per epoch: poly learning rate,
``batches_per_epoch`` steps (AMP on CUDA only, gradient clipping), validation Dice every
``val_every`` epochs, a checkpoint every ``checkpoint_every`` epochs and at the end (through
:mod:`distillation.checkpoint`), metrics to JSON / CSV / PNG. Under torchrun the model is
wrapped in DDP and only rank 0 writes files.

Ctrl-C (``KeyboardInterrupt``) during an epoch saves the weights and optimizer state of that
moment as ``checkpoint_latest.pt`` with the epochs completed and where it stopped, and raises
:class:`TrainingInterrupted`; a resumed run starts the interrupted epoch again from its first
step with those weights (the steps it had finished are in the weights, not replayed).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from distillation.checkpoint import load_checkpoint, save_checkpoint
from distillation.config import Preset
from distillation.data.loader import PatchBatches, make_loader
from distillation.losses.objective import Objective
from distillation.train.distributed import DistContext, all_mean, max_weight_divergence
from distillation.train.metrics import MetricsLog
from distillation.train.models import ModelPair
from distillation.train.schedule import poly_lr, set_lr

__all__ = ["RunSpec", "ResumeState", "TrainingInterrupted", "fit", "validation_dice",
           "read_resume_state", "LATEST", "FINAL"]

log = logging.getLogger(__name__)

LATEST = "checkpoint_latest.pt"
FINAL = "checkpoint_final.pt"


@dataclass(frozen=True)
class RunSpec:
    """What a checkpoint needs besides weights: how to rebuild the student and describe it."""

    network_class_name: str
    arch_kwargs: Mapping[str, Any]
    input_channels: int
    num_classes: int
    width_factor: float = 1.0
    min_features: int = 4
    card: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResumeState:
    epoch: int
    state_dict: Mapping[str, torch.Tensor]
    kd_heads: Mapping[str, torch.Tensor] | None
    optimizer: dict[str, Any] | None
    scaler: dict[str, Any] | None


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training; ``checkpoint`` holds the state to resume from."""

    def __init__(self, checkpoint: Path, epochs_done: int, epochs: int, step: int, steps_per_epoch: int) -> None:
        self.checkpoint = checkpoint
        self.epochs_done = epochs_done
        self.epochs = epochs
        self.step = step
        self.steps_per_epoch = steps_per_epoch
        super().__init__(f"interrupted in epoch {epochs_done + 1}/{epochs} at step {step}/{steps_per_epoch}; "
                         f"saved {checkpoint} ({epochs_done} epoch{'' if epochs_done == 1 else 's'} done)")


def read_resume_state(out_dir: Path) -> ResumeState | None:
    """The latest checkpoint in ``out_dir`` (None if there is none)."""
    path = Path(out_dir) / LATEST
    if not path.exists():
        return None
    ck = load_checkpoint(path)
    return ResumeState(ck.epoch, ck.state_dict, ck.kd_heads, ck.optimizer, ck.extra.get("grad_scaler"))


def _full_res(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


@torch.no_grad()
def validation_dice(net: nn.Module, patches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    num_classes: int, device: torch.device) -> dict[str, float]:
    """nnU-Net's pseudo Dice: TP/FP/FN summed over all patches per label, then 2TP/(2TP+FP+FN).

    A label absent from both prediction and reference in every patch is left out (no NaN in
    the mean). Returns ``val_dice`` (mean over labels) and ``val_dice_<k>`` per label.
    """
    was_training = net.training
    net.eval()
    tp = torch.zeros(num_classes, dtype=torch.float64)
    fp = torch.zeros_like(tp)
    fn = torch.zeros_like(tp)
    for x, y in patches:
        pred = _full_res(net(x.to(device))).argmax(1).cpu()
        ref = y[:, 0] if y.ndim == pred.ndim + 1 else y
        for k in range(1, num_classes):
            p, r = pred == k, ref == k
            tp[k] += (p & r).sum()
            fp[k] += (p & ~r).sum()
            fn[k] += (~p & r).sum()
    net.train(was_training)
    out: dict[str, float] = {}
    dices = []
    for k in range(1, num_classes):
        denom = 2 * tp[k] + fp[k] + fn[k]
        if denom > 0:
            d = float(2 * tp[k] / denom)
            out[f"val_dice_{k}"] = d
            dices.append(d)
    out["val_dice"] = sum(dices) / len(dices) if dices else math.nan
    return out


def fit(pair: ModelPair, objective: Objective, optimizer: torch.optim.Optimizer, data: PatchBatches,
        val_patches: Sequence[tuple[torch.Tensor, torch.Tensor]], preset: Preset, out_dir: Path,
        spec: RunSpec, ctx: DistContext | None = None, resume: ResumeState | None = None) -> dict[str, Any]:
    """Train until ``preset.train.epochs``; returns the final summary (also in metrics.json)."""
    ctx = ctx or DistContext()
    out_dir = Path(out_dir)
    cfg, ocfg = preset.train, preset.optim
    device = ctx.device
    model = pair.model.to(device)
    # a student without KD never runs the teacher: its forward pass would cost more than the step
    teacher = pair.teacher.to(device) if pair.teacher is not None and objective.kd.needs_teacher else None
    use_amp = ocfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start = 0
    if resume is not None:
        model.student.load_state_dict(resume.state_dict, strict=True)
        if model.heads is not None and resume.kd_heads is not None:
            model.heads.load_state_dict(resume.kd_heads, strict=True)
        if resume.optimizer is not None:
            optimizer.load_state_dict(resume.optimizer)
        if resume.scaler:
            scaler.load_state_dict(resume.scaler)
        start = resume.epoch
        log.info("resuming at epoch %d", start)
    wrapped: nn.Module = model
    if ctx.is_distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    metrics = MetricsLog.resume(out_dir, start) if ctx.is_main else None
    needs_feats = objective.kd.needs_features
    loader = make_loader(data, preset.data.num_workers)
    params = [p for p in model.parameters() if p.requires_grad]

    def save(epoch: int, name: str, **more: Any) -> None:
        if not ctx.is_main:
            return
        save_checkpoint(
            out_dir / name, model.student, network_class_name=spec.network_class_name,
            arch_kwargs=spec.arch_kwargs, input_channels=spec.input_channels,
            num_classes=spec.num_classes, width_factor=spec.width_factor,
            min_features=spec.min_features, card=spec.card, epoch=epoch, optimizer=optimizer,
            kd_heads=model.heads, extra={**spec.extra, "grad_scaler": scaler.state_dict(),
                                         "preset": preset.to_json(), **more})

    at = {"epoch": start, "step": 0}  # where training is, for a Ctrl-C checkpoint
    bar = None
    try:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            lr = poly_lr(epoch, cfg.epochs, ocfg.lr, ocfg.poly_exponent)
            set_lr(optimizer, lr)
            data.set_epoch(epoch)
            objective.set_epoch(epoch, cfg.epochs)  # the KD warm-up factor ([kd] warmup_fraction)
            wrapped.train()
            sums: dict[str, float] = {}
            steps = 0
            at.update(epoch=epoch, step=0)
            bar = tqdm(loader, total=data.batches_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not (cfg.progress and ctx.is_main), leave=False)
            for x, y in bar:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, enabled=use_amp):
                    t_out = t_feats = None
                    if teacher is not None:
                        with torch.no_grad():
                            if needs_feats:
                                t_out, t_feats = teacher.forward_with_features(x)
                            else:
                                t_out = teacher(x)
                    outputs, _, projected = wrapped(x)
                    loss, parts = objective(outputs, y, projected=projected, teacher_outputs=t_out,
                                            teacher_features=t_feats)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss must be finite, got {float(loss)} at epoch {epoch}")
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, ocfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                steps += 1
                at["step"] = steps
                bar.set_postfix(loss=f"{parts['total']:.4f}")
            means = all_mean({f"train_{k}": v / max(steps, 1) for k, v in sums.items()}, ctx)
            record: dict[str, Any] = {"epoch": epoch, "lr": lr, **means}
            done = epoch + 1
            if done % cfg.val_every == 0 or done == cfg.epochs:
                if ctx.is_main and val_patches:
                    record.update(validation_dice(model.student, val_patches, spec.num_classes, device))
                ctx.barrier()
            record["epoch_seconds"] = time.perf_counter() - t0
            if metrics is not None:
                metrics.append(record)
                log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in record.items()})
            at.update(epoch=done, step=0)  # recorded: a Ctrl-C from here on keeps this epoch
            if done % cfg.checkpoint_every == 0 and done < cfg.epochs:
                save(done, LATEST)
            ctx.barrier()
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        save(at["epoch"], LATEST, interrupted={"epoch": at["epoch"] + 1, "step": at["step"],
                                               "steps_per_epoch": data.batches_per_epoch})
        raise TrainingInterrupted(out_dir / LATEST, at["epoch"], cfg.epochs, at["step"],
                                  data.batches_per_epoch) from None
    summary: dict[str, Any] = {"epochs_completed": cfg.epochs, "world_size": ctx.world_size}
    divergence = max_weight_divergence(model, ctx)
    if ctx.is_distributed:
        summary["max_weight_divergence_across_ranks"] = divergence
    save(cfg.epochs, LATEST)
    save(cfg.epochs, FINAL)
    if metrics is not None:
        last_val = [r for r in metrics.records if "val_dice" in r]
        if last_val:
            summary["final_val_dice"] = last_val[-1]["val_dice"]
        metrics.write(summary)
    ctx.barrier()
    return summary
