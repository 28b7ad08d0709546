"""The `distill` command. Each sub-command module exposes ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pacsnode.errors import PacsnodeError

__all__ = ["main"]

# Sub-command modules, in the order `distill --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "distillation.cli_phantoms",
    "distillation.cli_train",
    "distillation.cli_import_nnunet",
    "distillation.cli_export",
    "distillation.cli_evaluate",
    "distillation.cli_show_case",
    "distillation.cli_study",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill",
        description="Synthetic phantoms, nnU-Net-style teachers and distilled students for pacsnode.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (PacsnodeError, ValueError, FileNotFoundError) as exc:
        print(f"distill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
