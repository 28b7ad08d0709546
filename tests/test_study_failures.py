"""The study report's failed-case section: which held-out cases each run misses, and which of them the
teacher misses too (from each run's evaluation.json beside its model.onnx)."""

from __future__ import annotations

import json
from pathlib import Path

from distillation.study.failures import failed_cases, failure_lines

REGIONS = ["whole_tumor", "tumor_core"]


def _run(tmp_path: Path, run: str, role: str, kd: str, dice: dict[str, tuple[float, float]]) -> dict:
    folder = tmp_path / run
    folder.mkdir()
    cases = {case: {"whole_tumor": {"dice": wt}, "tumor_core": {"dice": tc}} for case, (wt, tc) in dice.items()}
    (folder / "evaluation.json").write_text(json.dumps({"cases": cases}))
    return {"run": run, "role": role, "kd": kd, "structures": REGIONS, "model": str(folder / "model.onnx")}


def test_failed_cases_lists_regions_below_the_threshold() -> None:
    evaluation = {"cases": {"b": {"whole_tumor": {"dice": 0.9}, "tumor_core": {"dice": 0.2}},
                            "a": {"whole_tumor": {"dice": 0.49}, "tumor_core": {"dice": None}},
                            "c": {"whole_tumor": {"dice": 0.5}, "tumor_core": {"dice": 1.0}}}}
    assert failed_cases(evaluation, REGIONS) == {"a": {"whole_tumor": 0.49}, "b": {"tumor_core": 0.2}}


def test_failure_lines_mark_the_cases_the_teacher_fails_too(tmp_path: Path) -> None:
    rows = [_run(tmp_path, "teacher", "teacher", "-", {"c1": (0.1, 0.9), "c2": (0.9, 0.9), "c3": (0.9, 0.3)}),
            _run(tmp_path, "w0.25-logit-s0", "student", "logit", {"c1": (0.2, 0.9), "c2": (0.4, 0.9), "c3": (1, 1)}),
            _run(tmp_path, "w0.25-none-s0", "student", "none", {"c1": (0.9, 0.9), "c2": (0.9, 0.9), "c3": (1, 1)}),
            {"run": "w0.5-none-s0", "role": "student", "kd": "none", "structures": REGIONS,
             "model": str(tmp_path / "unmeasured" / "model.onnx")}]  # no evaluation.json: left out
    lines = failure_lines(rows)
    text = "\n".join(lines)
    assert "| teacher | c1 (whole_tumor 0.10); c3 (tumor_core 0.30) |  |" in lines
    assert "| w0.25-logit-s0 | c1* (whole_tumor 0.20); c2 (whole_tumor 0.40) | 1 of 2 |" in lines
    assert "| w0.25-none-s0 | none | |" in lines
    assert "w0.5-none-s0" not in text
    assert "KD runs 1 of 2; no KD runs 0 of 0" in text


def test_failure_lines_are_empty_without_evaluations(tmp_path: Path) -> None:
    assert failure_lines([{"run": "teacher", "role": "teacher", "kd": "-", "structures": REGIONS,
                           "model": str(tmp_path / "model.onnx")}]) == []


def test_failure_lines_read_the_per_case_dice_a_row_carries(tmp_path: Path) -> None:
    # a row taken from a results file: its model and evaluation.json are on another machine
    row = {"run": "w0.25-none-s0", "role": "student", "kd": "none", "structures": REGIONS,
           "model": str(tmp_path / "elsewhere" / "model.onnx"),
           "case_dice": {"c1": {"whole_tumor": 0.3, "tumor_core": 0.9}, "c2": {"whole_tumor": 0.9, "tumor_core": None}}}
    assert "| w0.25-none-s0 | c1 (whole_tumor 0.30) |  |" in failure_lines([row])


def test_failure_lines_give_each_runs_mean_dice_without_the_teachers_failures(tmp_path: Path) -> None:
    rows = [_run(tmp_path, "teacher", "teacher", "-", {"c1": (0.1, 0.9), "c2": (0.9, 0.7), "c3": (0.8, 1.0)}),
            _run(tmp_path, "w0.25-none-s0", "student", "none", {"c1": (1.0, 1.0), "c2": (0.5, 0.9), "c3": (1.0, None)})]
    text = "\n".join(failure_lines(rows))
    # c1 set aside; teacher: whole_tumor (0.9 + 0.8) / 2, tumor_core (0.7 + 1.0) / 2; the student's c3 has
    # no tumor_core Dice, so its tumor_core mean is over c2 alone, as its row's mean_dice would be
    assert ("Mean Dice over regions on the 2 held-out case(s) the teacher does not fail (the runs with those few "
            "cases set aside): teacher 0.850; w0.25-none-s0 0.825.") in text


def test_failure_lines_give_no_such_mean_when_the_teacher_fails_nothing(tmp_path: Path) -> None:
    rows = [_run(tmp_path, "teacher", "teacher", "-", {"c1": (0.9, 0.9)}),
            _run(tmp_path, "w0.25-none-s0", "student", "none", {"c1": (0.2, 0.9)})]
    assert "does not fail" not in "\n".join(failure_lines(rows))
