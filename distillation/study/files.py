"""A study's work folder: the files that mark a step finished, and how they are written.

Each step of ``distill study`` leaves one file behind (a final checkpoint, a ``result.json``, ...);
the runner skips a step whose file is there, so writes are atomic (a temporary file replaced into
place, named by process so that processes sharing WORK never collide).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["FINAL", "LATEST", "PLAN", "RESULT", "atomic_json"]

FINAL = "checkpoint_final.pt"
LATEST = "checkpoint_latest.pt"
PLAN = "checkpoint_plan.pt"  # a copy of the teacher's latest checkpoint, for no-KD students (plan only)
RESULT = "result.json"


def atomic_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # processes sharing WORK (--runs) never collide
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
