"""The no-network voxel baseline beside every study table (issue 23: a benchmark where capacity matters).

``distill study`` fits :func:`distillation.evaluate.baseline_dataset.evaluate_dataset` once per work
folder, on the study's training cases, scores it on the same held-out cases as the networks and keeps
the result in ``WORK/baseline/result.json``; the report puts it in its table as a row of its own, so
that no table shows what the networks reach without what no network already reaches.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

from distillation.study.files import atomic_json

__all__ = ["BASELINE_RESULT", "ensure_baseline", "load_baseline", "baseline_dice"]

log = logging.getLogger(__name__)

BASELINE_RESULT = Path("baseline") / "result.json"


def load_baseline(work: Path) -> dict[str, Any] | None:
    path = Path(work) / BASELINE_RESULT
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def ensure_baseline(work: Path, dataset: Path) -> dict[str, Any]:
    """The baseline's result for this work folder, fitted and scored if not done yet."""
    from distillation.evaluate.baseline_dataset import evaluate_dataset

    done = load_baseline(work)
    if done is not None:
        return done
    log.info("study: fitting the voxel baseline on %s", dataset)
    result = evaluate_dataset(dataset)
    path = Path(work) / BASELINE_RESULT
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(path, result)
    return result


def baseline_dice(baseline: dict[str, Any], structures: list[str]) -> tuple[dict[str, float | None], float | None]:
    """Dice per table structure (a region, else a label of that name) and their mean, as the networks' rows."""
    regions, labels = baseline.get("dice_per_region") or {}, baseline.get("dice_per_label") or {}
    dice = {s: regions.get(s, labels.get(s)) for s in structures}
    known = [v for v in dice.values() if v is not None]
    return dice, (statistics.fmean(known) if known and len(known) == len(structures) else None)
