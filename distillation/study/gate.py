"""The pilot gate (issue 23, part 2; docs/study.md): is the benchmark hard enough for the study?

Before the study runs, a pilot must show that capacity matters on its benchmark: the teacher beats
the no-network voxel baseline by at least ``BASELINE_MARGIN`` mean Dice and the width-1/4 student
without KD by at least ``STUDENT_MARGIN``. Both are judged on the held-out cases' mean Dice over the
study's regions, and each margin comes with its 95 % interval:

* teacher − baseline: paired by case, the cases resampled (one teacher, one baseline fit: the
  interval covers the choice of cases, not of training runs);
* teacher − student: the student's seeds × cases against the one teacher on the same cases, seeds
  and then cases resampled (:func:`distillation.study.analysis.hierarchical_bootstrap`), so the
  interval also covers the student's seed.

A margin *passes* when its point estimate reaches the threshold; the interval says how sure that is.

    python -m distillation.study.gate WORK/results.json [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distillation.study.analysis import arm_data, claim, hierarchical_bootstrap
from distillation.study.baseline_row import baseline_dice

__all__ = ["BASELINE_MARGIN", "STUDENT_MARGIN", "gate", "gate_lines", "main"]

BASELINE_MARGIN = 0.10
STUDENT_MARGIN = 0.05


def _baseline_cases(baseline: Mapping[str, Any], structures: Sequence[str], cases: Sequence[str]) -> np.ndarray:
    per_case = {c["case"]: c["dice"] for c in baseline["per_case"]}
    missing = [c for c in cases if c not in per_case]
    if missing:
        raise ValueError(f"the baseline must be scored on the study's held-out cases, got none for {', '.join(missing[:3])}")
    return np.array([[float(np.mean([per_case[c][s] for s in structures])) for c in cases]])


def gate(results: Mapping[str, Any], width: float = 0.25, seed: int = 0) -> dict[str, Any]:
    """The two margins with their intervals, from a study's results file (rows and ``baseline``)."""
    rows, baseline = results["rows"], results.get("baseline")
    if baseline is None:
        raise ValueError("a gate needs the voxel baseline in the results (distill study fits it when it measures)")
    teacher = arm_data(rows, 1.0, "-", label="teacher")
    student = arm_data(rows, width, "none", label=f"no KD at {width:g}")
    structures = next(r["structures"] for r in rows if r["role"] == "teacher")
    cases = [c for c in teacher.cases if c in student.cases]
    t = teacher.subset(teacher.seeds, cases).values
    s = student.subset(student.seeds, cases).values
    b = _baseline_cases(baseline, structures, cases)
    vs_baseline = hierarchical_bootstrap(t, b, seed=seed)
    vs_student = hierarchical_bootstrap(np.repeat(t, len(s), axis=0), s, seed=seed)
    out = {"structures": list(structures), "cases": len(cases), "student_seeds": list(student.seeds),
           "teacher": float(t.mean()), "baseline": float(b.mean()), "student": float(s.mean()),
           "student_per_seed": [float(v) for v in s.mean(axis=1)]}
    for name, interval, margin in (("teacher_vs_baseline", vs_baseline, BASELINE_MARGIN),
                                   ("teacher_vs_student", vs_student, STUDENT_MARGIN)):
        what = "teacher − voxel baseline" if name == "teacher_vs_baseline" else f"teacher − no KD at {width:g}"
        out[name] = {**interval.to_dict(), "margin": margin, "passed": interval.estimate >= margin,
                     "claim": claim(f"{what}, mean Dice", interval)}
    out["passed"] = out["teacher_vs_baseline"]["passed"] and out["teacher_vs_student"]["passed"]
    return out


def gate_lines(teacher: dict[str, Any], none: dict[str, Any] | None, baseline: dict[str, Any]) -> list[str]:
    """The pilot gate (issue 23): the teacher ≥ 10 Dice points above the voxel baseline and ≥ 5 above the
    width-1/4 student without KD (mean Dice over the table's structures, held-out means)."""
    t = teacher["mean_dice"][0]
    _, b = baseline_dice(baseline, teacher["structures"])
    out = []
    if b is None:
        out.append("- Gate, teacher vs voxel baseline: not measured (the baseline lacks the table's structures).")
    else:
        out.append(f"- Gate, teacher ≥ 10 points above the voxel baseline: {t:.3f} vs {b:.3f} = "
                   f"{100 * (t - b):+.1f} points → **{'passed' if t - b >= 0.10 else 'not passed'}**.")
    if none is None or none["mean_dice"][0] is None:
        out.append("- Gate, teacher vs width-1/4 student without KD: not measured.")
    else:
        n, spread = none["mean_dice"]
        sd = f" ± {spread:.3f}" if spread is not None else ""
        out.append(f"- Gate, teacher ≥ 5 points above the width-1/4 student without KD (seeds "
                   f"{','.join(map(str, none['seeds']))}): {t:.3f} vs {n:.3f}{sd} = "
                   f"{100 * (t - n):+.1f} points → **{'passed' if t - n >= 0.05 else 'not passed'}**.")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distillation.study.gate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="a study's WORK/results.json or DOCS/<stem>-results.json")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = p.parse_args(argv)
    try:
        g = gate(json.loads(args.results.read_text(encoding="utf-8")), args.width)
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"gate: {exc}\n")
        return 2
    if args.json:
        sys.stdout.write(json.dumps(g, ensure_ascii=False) + "\n")
        return 0
    print(f"held-out mean Dice over {', '.join(g['structures'])} ({g['cases']} cases): teacher {g['teacher']:.3f}, "
          f"voxel baseline {g['baseline']:.3f}, no KD at {args.width:g} {g['student']:.3f} "
          f"(seeds {', '.join(f'{v:.3f}' for v in g['student_per_seed'])})")
    for name in ("teacher_vs_baseline", "teacher_vs_student"):
        m = g[name]
        print(f"{m['claim']}; needs >= {m['margin']:.2f}: {'passed' if m['passed'] else 'NOT passed'}")
    print(f"gate: {'passed' if g['passed'] else 'NOT passed'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
