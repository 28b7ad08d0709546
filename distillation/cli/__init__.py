"""The `distill` command. Each sub-command module exposes ``register(subparsers)``.

The sub-commands need the ``[train]`` extra (torch, MONAI, ...); building the parser does not,
so ``distill --help`` and ``distill --version`` work on a node installed without it, and a
sub-command run without it prints one line naming ``pip install "pacsnode[train]"`` (exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

from pacsnode import __version__
from pacsnode.errors import PacsnodeError

__all__ = ["main", "build_parser", "missing_train_modules", "TRAIN_EXTRA_HINT"]

# Sub-command modules, in the order `distill --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "distillation.cli.phantoms",
    "distillation.cli.train",
    "distillation.cli.import_nnunet",
    "distillation.cli.export",
    "distillation.cli.evaluate",
    "distillation.cli.baseline",
    "distillation.cli.show_case",
    "distillation.cli.study",
)

# Import names of the [train] extra (pyproject.toml) that the sub-commands need.
TRAIN_MODULES: tuple[str, ...] = ("torch", "monai", "nilearn", "onnx", "matplotlib")
TRAIN_EXTRA_HINT = 'pip install "pacsnode[train]"'


def missing_train_modules() -> list[str]:
    """The [train] extra's modules that cannot be imported here (empty when it is installed)."""
    missing = []
    for name in TRAIN_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill",
        description="Synthetic phantoms, nnU-Net-style teachers and distilled students for pacsnode. "
                    f"Needs the [train] extra: {TRAIN_EXTRA_HINT}.",
    )
    parser.add_argument("--version", action="version", version=f"distill (pacsnode) {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv  # for the resume command a Ctrl-C prints
    missing = missing_train_modules()
    if missing:
        print(f"distill: error: distill needs the [train] extra, missing {', '.join(missing)}: "
              f"{TRAIN_EXTRA_HINT}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (PacsnodeError, ValueError, FileNotFoundError) as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distill: interrupted", file=sys.stderr)
        return 130

