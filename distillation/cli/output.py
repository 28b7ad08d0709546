"""How `distill` prints results: a table for people, ``--json`` for machines.

Numbers are shown to 4 significant digits in tables (``0.9876``, ``12.35``) and to 6 in JSON;
the files a command writes (metrics.json, results.json) keep full precision. In JSON a value that
is not finite (an HD95 with one empty mask, a mean over no cases) is ``null``, never ``Infinity``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["add_json_option", "number", "table", "fields", "machine", "emit"]


def add_json_option(p: argparse.ArgumentParser) -> None:
    """The one ``--json`` option every command that reports results has."""
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON object (numbers to 6 significant digits) "
                        "instead of a table")


def number(value: Any, digits: int = 4) -> str:
    """A cell: floats to ``digits`` significant digits, inf as ``inf``, NaN / None as ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return " x ".join(number(v, digits) for v in value) if all(
            isinstance(v, (int, float)) for v in value) else ", ".join(str(v) for v in value)
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text in ("-", "inf", "-inf")
    return True


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned columns under a header and a rule; numeric columns right-aligned."""
    cells = [[number(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [bool(cells) and all(_is_number(r[i]) for r in cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(list(headers)), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """``name   value`` lines, names padded to one column."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {number(v)}" for k, v in pairs)


def machine(value: Any, digits: int = 6) -> Any:
    """A JSON-safe copy: floats to ``digits`` significant digits, non-finite floats as None."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): machine(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [machine(v, digits) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def emit(args: argparse.Namespace, data: Mapping[str, Any], text: str) -> None:
    """Print ``data`` as JSON with ``--json``, else ``text``; only rank 0 of a torchrun job prints."""
    import os

    if os.environ.get("RANK", "0") != "0":
        return
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(machine(data), indent=2) + "\n")
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")
