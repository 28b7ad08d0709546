"""``distill train-teacher`` and ``distill distill``: preset-driven training from the command line.

Both run under ``torchrun --nproc-per-node N -m distillation.cli ...`` as DDP (NCCL on GPUs,
gloo on CPU); only rank 0 writes files. ``--resume`` continues from ``OUT/checkpoint_latest.pt``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from pacsnode.errors import ConfigError

__all__ = ["register"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="PRESET",
                   help="preset file, or a bundled preset name (brain-tiny, brain-cpu, brain-full)")
    p.add_argument("--dataset", required=True, type=Path, help="nnU-Net raw dataset folder (dataset.json)")
    p.add_argument("--out", required=True, type=Path, help="output folder (checkpoints, metrics, plot)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_latest.pt")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's train.epochs")
    p.add_argument("--num-workers", type=int, default=None, help="override the preset's data.num_workers")


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train-teacher", help="train a teacher U-Net from an nnU-Net raw dataset")
    _common(t)
    t.set_defaults(func=_train_teacher)
    d = sub.add_parser("distill", help="distil a narrower student from a teacher checkpoint")
    _common(d)
    d.add_argument("--teacher", required=True, type=Path, help="teacher checkpoint (.pt)")
    d.add_argument("--width", type=float, default=0.25, help="student width factor (default 0.25)")
    d.add_argument("--kd", default=None, metavar="TERMS",
                   help="comma-separated KD terms from logit, sard, ca (default: the preset's [kd])")
    d.set_defaults(func=_distill)


def _preset(args: argparse.Namespace):
    from distillation.config import load_preset

    preset = load_preset(args.config)
    if args.epochs is not None:
        if args.epochs < 1:
            raise ConfigError(f"--epochs must be a positive integer, got {args.epochs}")
        preset = replace(preset, train=replace(preset.train, epochs=args.epochs))
    if args.num_workers is not None:
        if args.num_workers < 0:
            raise ConfigError(f"--num-workers must be zero or more, got {args.num_workers}")
        preset = replace(preset, data=replace(preset.data, num_workers=args.num_workers))
    if not (args.dataset / "dataset.json").is_file():
        raise ConfigError(f"--dataset must be an nnU-Net raw dataset folder with dataset.json, "
                          f"got {str(args.dataset)!r}")
    return preset


def _report(summary: dict) -> int:
    import os

    if os.environ.get("RANK", "0") == "0":
        sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def _train_teacher(args: argparse.Namespace) -> int:
    from distillation.train import train_teacher

    return _report(train_teacher(_preset(args), args.dataset, args.out, resume=args.resume))


def _distill(args: argparse.Namespace) -> int:
    from distillation.config import with_kd_terms
    from distillation.train import distill

    if not args.width > 0 or args.width > 1:
        raise ConfigError(f"--width must be a number in (0, 1], got {args.width}")
    if not args.teacher.is_file():
        raise ConfigError(f"--teacher must be a checkpoint file, got {str(args.teacher)!r}")
    preset = with_kd_terms(_preset(args), args.kd)
    return _report(distill(preset, args.teacher, args.width, args.dataset, args.out, resume=args.resume))
