"""``distill train-teacher`` and ``distill distill``: preset-driven training from the command line.

Both run under ``torchrun --nproc-per-node N -m distillation.cli ...`` as DDP (NCCL on GPUs,
gloo on CPU); only rank 0 writes files. A folder holding a run is never trained over silently:
``--resume`` continues from ``OUT/checkpoint_latest.pt``, ``--force`` starts again. Ctrl-C saves
a checkpoint and prints the command that resumes it (exit 130).

``distill distill --unlabelled DIR [--labelled-cases N]`` distils from scans without labels (the
on-premises case, docs/label-free.md): the teacher's soft targets on DIR's images, plus the
supervised loss on the first N training cases of ``--dataset`` (then optional: without it, no
label is read at all). ``--labelled-cases N`` without ``--unlabelled`` is the supervised control on
the same budget: those N cases only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

from distillation.cli.output import add_json_option, emit, fields
from distillation.cli.presets import presets_epilog
from pacsnode.errors import ConfigError

__all__ = ["register", "resume_command"]


def _common(p: argparse.ArgumentParser, dataset_help: str = "nnU-Net raw dataset folder (dataset.json)",
            dataset_required: bool = True) -> None:
    p.add_argument("--config", required=True, metavar="PRESET",
                   help="a bundled preset name (listed below) or a preset .toml file")
    p.add_argument("--dataset", required=dataset_required, type=Path, help=dataset_help)
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (checkpoints, metrics, plot); one holding a run needs --resume or "
                        "--force")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in --out from OUT/checkpoint_latest.pt (after Ctrl-C, or "
                            "with a larger --epochs after it finished)")
    again.add_argument("--force", action="store_true",
                       help="start again from scratch: remove the run in --out (checkpoints, metrics, "
                            "preprocessed cache) first")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's train.epochs")
    p.add_argument("--num-workers", type=int, default=None, help="override the preset's data.num_workers")
    add_json_option(p)


def register(sub: argparse._SubParsersAction) -> None:
    epilog = presets_epilog(study=False)
    t = sub.add_parser("train-teacher", help="train a teacher U-Net from an nnU-Net raw dataset",
                       description=textwrap.fill(
                           "Train an nnU-Net-style teacher (Dice+CE, deep supervision) on an nnU-Net raw "
                           "dataset with a preset. Ctrl-C saves a checkpoint and prints how to resume.", 88),
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(t)
    t.set_defaults(func=_train_teacher)
    d = sub.add_parser("distill", help="distil a narrower student from a teacher checkpoint",
                       description=textwrap.fill(
                           "Distil a student of a given width from a teacher checkpoint with the preset's "
                           "(or --kd's) KD terms; the student reuses the teacher's plan. Ctrl-C saves a "
                           "checkpoint and prints how to resume. With --unlabelled it learns from images "
                           "without labels through the teacher's soft targets, with --labelled-cases from a "
                           "label budget (docs/label-free.md).", 88),
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(d, "nnU-Net raw dataset folder (dataset.json); optional with --unlabelled, where it gives the "
               "validation cases and the --labelled-cases", dataset_required=False)
    d.add_argument("--teacher", required=True, type=Path, help="teacher checkpoint (.pt)")
    d.add_argument("--width", type=float, default=0.25, help="student width factor (default 0.25)")
    d.add_argument("--kd", default=None, metavar="TERMS",
                   help="comma-separated KD terms from logit, sard, ca, or a bundled KD recipe's name "
                        "(kd-NAME below, e.g. recokd-public; docs/kd-recipes.md) (default: the preset's [kd])")
    d.add_argument("--unlabelled", type=Path, default=None, metavar="DIR",
                   help="also train on these images without labels, through the teacher's soft targets only "
                        "(DIR/imagesTr/CASE_0000.nii.gz, or DIR/CASE_0000.nii.gz; labels beside them are never "
                        "read; --dataset's own validation and labelled cases are left out); needs a KD term")
    d.add_argument("--labelled-cases", type=int, default=None, metavar="N",
                   help="label budget: only the first N training cases of --dataset keep their labels "
                        "(default: all; 0 with --unlabelled: no label at all); without --unlabelled, the "
                        "supervised control that trains on those N cases alone")
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
    if args.dataset is not None and not (args.dataset / "dataset.json").is_file():
        raise ConfigError(f"--dataset must be an nnU-Net raw dataset folder with dataset.json, "
                          f"got {str(args.dataset)!r}")
    return preset


def _prepare_out(args: argparse.Namespace) -> None:
    """Refuse a folder holding a run without --resume / --force; --force clears it (rank 0)."""
    from distillation.train import check_out_dir, clear_run

    check_out_dir(args.out, resume=args.resume, force=args.force)
    if args.force and os.environ.get("RANK", "0") == "0":
        clear_run(args.out)


def resume_command(argv: list[str]) -> str:
    """The command line that resumes the run ``argv`` started (``--force`` dropped, ``--resume`` added)."""
    tokens = [t for t in argv if t != "--force"]
    if "--resume" not in tokens:
        tokens.append("--resume")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    prefix = (["torchrun", "--nproc-per-node", os.environ.get("LOCAL_WORLD_SIZE", str(world)), "-m",
               "distillation.cli"] if world > 1 else ["distill"])
    return shlex.join([*prefix, *tokens])


def _train(args: argparse.Namespace, role: str, run) -> int:
    from distillation.train import FINAL, TrainingInterrupted

    _prepare_out(args)
    try:
        summary = run()
    except TrainingInterrupted as stop:
        if os.environ.get("RANK", "0") == "0":
            print(f"distill: {stop}", file=sys.stderr)
            print(f"resume with: {resume_command(list(args.argv))}", file=sys.stderr)
        return 130
    data = {"role": role, "out": str(args.out), "checkpoint": str(args.out / FINAL),
            "metrics": str(args.out / "metrics.json"), **summary}
    rows = [("role", role), ("epochs", summary.get("epochs_completed")),
            ("final val Dice", summary.get("final_val_dice")), ("world size", summary.get("world_size")),
            ("checkpoint", data["checkpoint"]), ("metrics", data["metrics"])]
    if "max_weight_divergence_across_ranks" in summary:
        rows.insert(4, ("max weight divergence", summary["max_weight_divergence_across_ranks"]))
    emit(args, data, fields(rows))
    return 0


def _train_teacher(args: argparse.Namespace) -> int:
    from distillation.train import train_teacher

    preset = _preset(args)
    return _train(args, "teacher", lambda: train_teacher(preset, args.dataset, args.out, resume=args.resume))


def _distill(args: argparse.Namespace) -> int:
    from distillation.config import with_kd_terms
    from distillation.train import LabelBudget, distill

    if not args.width > 0 or args.width > 1:
        raise ConfigError(f"--width must be a number in (0, 1], got {args.width}")
    if not args.teacher.is_file():
        raise ConfigError(f"--teacher must be a checkpoint file, got {str(args.teacher)!r}")
    preset = with_kd_terms(_preset(args), args.kd)
    budget = None
    if args.unlabelled is not None or args.labelled_cases is not None:
        budget = LabelBudget(args.unlabelled, args.labelled_cases)
        budget.check(args.dataset, preset.kd.needs_teacher)
    elif args.dataset is None:
        raise ConfigError("--dataset is required unless --unlabelled gives the training images, got neither")
    return _train(args, f"student (width {args.width:g})",
                  lambda: distill(preset, args.teacher, args.width, args.dataset, args.out, resume=args.resume,
                                  budget=budget))
