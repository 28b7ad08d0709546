"""`pacsnode conformance`: write the DICOM Conformance Statement generated from the code."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pacsnode.config import load_settings
from pacsnode.conformance import statement
from pacsnode.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("conformance", help="write the DICOM Conformance Statement (docs/conformance.md)")
    p.add_argument("--config", default="config.toml", help="the node's configuration (default: config.toml)")
    p.add_argument("--out", default="docs/conformance.md", help="where to write it ('-' for stdout)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    text = statement(settings, Path(args.config).name)
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise ConfigError(f"--out must be a writable file, got {out}: {exc.strerror or exc}") from None
    print(f"wrote {out}")
    return 0
