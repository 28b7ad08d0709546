"""The `pacsnode` command.

Each sub-command lives in its own module of this package and exposes
``register(subparsers)``; the module list below is the whole command surface.

Exit codes: 0 done; 1 a runtime failure (a peer unreachable or refusing, a port another
process holds, a job or the demo that did not finish, a file the system would not write);
2 bad input or configuration (a bad key or value, a missing model, a path that does not
exist). Either way the error is one line on stderr, ``pacsnode: error: ...``, never a
traceback (``-vv`` adds it for a bug report). A reader that closes the pipe early
(``pacsnode model info ... | head``) ends the command quietly with 0.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from pacsnode.errors import DeliveryError, InferenceError, PacsnodeError, ResultsError

__all__ = ["main", "build_parser"]

# Sub-command modules, in the order `pacsnode --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "pacsnode.cli.demo",
    "pacsnode.cli.serve",
    "pacsnode.cli.worker",
    "pacsnode.cli.status",
    "pacsnode.cli.jobs",
    "pacsnode.cli.deliveries",
    "pacsnode.cli.send",
    "pacsnode.cli.echo",
    "pacsnode.cli.infer",
    "pacsnode.cli.model",
    "pacsnode.cli.config_cmd",
    "pacsnode.cli.route",
    "pacsnode.cli.conformance",
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2

# PacsnodeErrors that report a failure at run time (exit 1); every other one is bad input (2).
RUNTIME_ERRORS: tuple[type[PacsnodeError], ...] = (DeliveryError, InferenceError, ResultsError)


def version() -> str:
    """The installed distribution's version (the package's own in a plain checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("pacsnode")
    except PackageNotFoundError:
        from pacsnode import __version__

        return __version__


def error_exit_code(exc: PacsnodeError) -> int:
    """1 for a runtime failure, 2 for bad input or configuration (an ``exit_code`` attribute wins)."""
    code = getattr(exc, "exit_code", None)
    if code in (EXIT_FAILURE, EXIT_BAD_INPUT):
        return int(code)
    return EXIT_FAILURE if isinstance(exc, RUNTIME_ERRORS) else EXIT_BAD_INPUT


def os_error_text(exc: OSError) -> str:
    """An OSError as one line: what failed, on which file."""
    what = exc.strerror or str(exc) or type(exc).__name__
    name = f": {exc.filename}" if getattr(exc, "filename", None) else ""
    return f"{what[0].lower()}{what[1:]}{name}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacsnode",
        description="On-premises DICOM node: receives series, runs a segmentation model on the CPU, "
        "returns DICOM SEG and SR to the PACS.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--version", action="version", version=f"pacsnode {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    verbose = 0
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        verbose = args.verbose
        level = logging.WARNING - 10 * min(args.verbose, 2)
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return int(args.func(args) or EXIT_OK)
    except BrokenPipeError:
        # The reader went away (`| head`): say nothing more, and keep the interpreter's final
        # flush from raising again on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except PacsnodeError as exc:
        return _fail(str(exc), error_exit_code(exc), verbose)
    except OSError as exc:
        return _fail(os_error_text(exc), EXIT_FAILURE, verbose)
    except KeyboardInterrupt:
        return 130


def _fail(message: str, code: int, verbose: int) -> int:
    if verbose >= 2:
        traceback.print_exc()
    print(f"pacsnode: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
