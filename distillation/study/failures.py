"""The held-out cases each run fails on, and which of them the teacher fails on too.

A mean Dice over 40 cases moves by up to 0.025 for each case a model misses outright, so two
failures can decide a comparison between runs that agree everywhere else. Listing them per run,
marked where the teacher fails on the same case, shows what a mean hides: whether a KD student has
learnt its teacher's mistakes (a no-KD student never sees the teacher's outputs, so what it shares
with the teacher is chance or a hard case). Each run's mean Dice over the other cases, those the
teacher does not fail, then shows how far apart the runs are once those few cases are set aside.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["FAIL_DICE", "failed_cases", "failure_lines"]

FAIL_DICE = 0.5


def failed_cases(evaluation: dict[str, Any], structures: Sequence[str],
                 threshold: float = FAIL_DICE) -> dict[str, dict[str, float]]:
    """``{case: {structure: dice}}`` for the cases where some structure's Dice is below ``threshold``."""
    out: dict[str, dict[str, float]] = {}
    for case, metrics in sorted(evaluation["cases"].items()):
        low = {s: float(metrics[s]["dice"]) for s in structures
               if metrics.get(s, {}).get("dice") is not None and float(metrics[s]["dice"]) < threshold}
        if low:
            out[case] = low
    return out


def _evaluation(row: dict[str, Any]) -> dict[str, Any] | None:
    """The run's per-case metrics: its ``case_dice`` (kept in the row, so a results file carries them),
    else the ``evaluation.json`` beside its model (rows written before rows carried them)."""
    if row.get("case_dice") is not None:
        return {"cases": {case: {s: {"dice": d} for s, d in dice.items()} for case, dice in row["case_dice"].items()}}
    path = Path(row["model"]).with_name("evaluation.json") if row.get("model") else None
    return json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else None


def failure_lines(rows: Sequence[dict[str, Any]], threshold: float = FAIL_DICE) -> list[str]:
    """The report's section: one table row per run with failures, how many the teacher shares, and each
    run's mean Dice over the cases the teacher does not fail."""
    failed = {}
    for row in rows:
        evaluation = _evaluation(row)
        if evaluation is not None:
            failed[row["run"]] = (row, evaluation, failed_cases(evaluation, row["structures"], threshold))
    if not failed:
        return []
    teacher_eval, teacher = next(((ev, cases) for row, ev, cases in failed.values() if row["role"] == "teacher"),
                                 (None, None))
    lines = [f"Held-out cases where a region's Dice is below {threshold:g}, per run"
             + (" (`*`: the teacher fails on that case too)." if teacher is not None else "."), "",
             "| run | failed cases | shared with the teacher |", "|---|---|---|"]
    shared: dict[str, list[int]] = {"KD": [0, 0], "no KD": [0, 0]}
    for run, (row, _, cases) in failed.items():
        if not cases:
            lines.append(f"| {run} | none | |")
            continue
        mark = teacher is not None and row["role"] != "teacher"
        cells = [f"{case}{'*' if mark and case in teacher else ''} ("
                 + ", ".join(f"{s} {d:.2f}" for s, d in low.items()) + ")" for case, low in cases.items()]
        common = sum(1 for case in cases if teacher is not None and case in teacher)
        share = "" if row["role"] == "teacher" or teacher is None else f"{common} of {len(cases)}"
        if share:
            counts = shared["no KD" if row["kd"] == "none" else "KD"]
            counts[0] += common
            counts[1] += len(cases)
        lines.append(f"| {run} | {'; '.join(cells)} | {share} |")
    if teacher is not None:
        lines += ["", f"The teacher fails on {len(teacher)} case(s). Student failures the teacher shares: "
                  + "; ".join(f"{kind} runs {c} of {n}" for kind, (c, n) in shared.items()) + "."]
        others = {run: _mean_dice(ev, row["structures"], set(teacher)) for run, (row, ev, _) in failed.items()}
        if teacher and any(v is not None for v in others.values()):
            lines += ["", f"Mean Dice over regions on the {len(set(teacher_eval['cases']) - set(teacher))} held-out "
                      "case(s) the teacher does not fail (the runs with those few cases set aside): "
                      + "; ".join(f"{run} {v:.3f}" for run, v in others.items() if v is not None) + "."]
    return lines + [""]


def _mean_dice(evaluation: dict[str, Any], structures: Sequence[str], leave_out: set[str]) -> float | None:
    """The mean over regions of each region's mean Dice over the cases not in ``leave_out`` (as a row's
    ``mean_dice`` is made over all of them)."""
    per_region = []
    for s in structures:
        values = [float(m[s]["dice"]) for case, m in evaluation["cases"].items()
                  if case not in leave_out and m.get(s, {}).get("dice") is not None]
        if values:
            per_region.append(sum(values) / len(values))
    return sum(per_region) / len(per_region) if per_region else None
