"""The `pacsnode` command.

Each sub-command lives in its own module of this package and exposes
``register(subparsers)``; the module list below is the whole command surface.
Errors a user can fix (bad config, bad input) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pacsnode.errors import PacsnodeError

__all__ = ["main", "build_parser"]

# Sub-command modules, in the order `pacsnode --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "pacsnode.cli.demo",
    "pacsnode.cli.serve",
    "pacsnode.cli.status",
    "pacsnode.cli.jobs",
    "pacsnode.cli.deliveries",
    "pacsnode.cli.send",
    "pacsnode.cli.echo",
    "pacsnode.cli.infer",
    "pacsnode.cli.model",
    "pacsnode.cli.config_cmd",
    "pacsnode.cli.conformance",
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsnode",
        description="On-premises DICOM node: receives series, runs a segmentation model on the CPU, "
        "returns DICOM SEG and SR to the PACS.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or EXIT_OK)
    except PacsnodeError as exc:
        print(f"pacsnode: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
