"""The presets bundled in ``distillation/presets``, listed for `distill ... --help` without torch."""

from __future__ import annotations

import textwrap
import tomllib
from importlib import resources

__all__ = ["bundled_presets", "presets_epilog"]


def bundled_presets(study: bool) -> list[tuple[str, str]]:
    """(name, description) of every bundled training preset (``study=False``) or study preset
    (``study-*.toml``, ``study=True``), sorted by name."""
    folder = resources.files("distillation") / "presets"
    out = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".toml") or entry.name.startswith("study-") != study:
            continue
        try:
            description = str(tomllib.loads(entry.read_text(encoding="utf-8")).get("description", ""))
        except tomllib.TOMLDecodeError:
            description = "(not valid TOML)"
        out.append((entry.name.removesuffix(".toml"), " ".join(description.split())))
    return sorted(out)


def presets_epilog(study: bool) -> str:
    """The ``bundled presets:`` block a sub-command's help ends with: one line per bundled file,
    its description shortened."""
    presets = bundled_presets(study)
    width = max((len(n) for n, _ in presets), default=0)
    lines = ["bundled presets (pass the name, or the path of a .toml file of your own):"]
    for name, description in presets:
        short = textwrap.shorten(description, max(40, 94 - width), placeholder=" ...", break_on_hyphens=False)
        lines.append(f"  {name.ljust(width)}  {short}".rstrip())
    return "\n".join(lines)
