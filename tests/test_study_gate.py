"""The pilot gate's margins and intervals, from a study's results (issue 23, part 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillation.study.gate import gate, main

REGIONS = ["whole_tumor", "tumor_core", "enhancing"]
CASES = [f"case_{i:04d}" for i in range(12)]


def _row(run: str, role: str, width: float, kd: str, seed: int, level: float) -> dict:
    spread = [0.02 * (i % 3 - 1) for i in range(len(CASES))]  # mean 0 over the 12 cases
    return {"run": run, "role": role, "width": width, "kd": kd, "seed": seed, "structures": REGIONS,
            "case_dice": {c: dict.fromkeys(REGIONS, level + d) for c, d in zip(CASES, spread, strict=True)}}


def _results(teacher: float, student: tuple[float, float], baseline: float) -> dict:
    rows = [_row("teacher", "teacher", 1.0, "-", 0, teacher),
            _row("w0.25-none-s0", "student", 0.25, "none", 0, student[0]),
            _row("w0.25-none-s1", "student", 0.25, "none", 1, student[1])]
    base = {"per_case": [{"case": c, "dice": dict.fromkeys(REGIONS, baseline)} for c in CASES]}
    return {"rows": rows, "baseline": base}


def test_both_margins_pass_with_their_intervals() -> None:
    g = gate(_results(0.80, (0.70, 0.72), 0.40))
    assert g["teacher_vs_baseline"]["estimate"] == pytest.approx(0.40)
    assert g["teacher_vs_student"]["estimate"] == pytest.approx(0.09)
    assert g["passed"] and g["student_per_seed"] == pytest.approx([0.70, 0.72])
    low, high = g["teacher_vs_student"]["low"], g["teacher_vs_student"]["high"]
    assert low <= 0.09 <= high and high - low > 0  # the student's two seeds differ: the interval has width
    assert g["teacher_vs_student"]["claim"].startswith("teacher − no KD at 0.25, mean Dice: +0.090 [")


def test_a_student_within_five_points_fails_the_gate() -> None:
    g = gate(_results(0.80, (0.77, 0.76), 0.40))
    assert g["teacher_vs_baseline"]["passed"] and not g["teacher_vs_student"]["passed"] and not g["passed"]


def test_a_baseline_within_ten_points_fails_the_gate() -> None:
    g = gate(_results(0.80, (0.60, 0.60), 0.75))
    assert not g["teacher_vs_baseline"]["passed"] and not g["passed"]


def test_the_command_prints_the_verdict_and_refuses_results_without_a_baseline(tmp_path: Path, capsys) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results(0.80, (0.70, 0.72), 0.40)))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "teacher 0.800, voxel baseline 0.400, no KD at 0.25 0.710" in out and out.strip().endswith("gate: passed")
    results = _results(0.80, (0.70, 0.72), 0.40)
    del results["baseline"]
    path.write_text(json.dumps(results))
    assert main([str(path)]) == 2
    assert capsys.readouterr().err.strip() == ("gate: a gate needs the voxel baseline in the results (distill study "
                                               "fits it when it measures)")
