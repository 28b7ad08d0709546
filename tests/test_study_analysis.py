"""The study's analysis: lesion detection counts on masks built by hand, the hierarchical bootstrap on
synthetic seeds × cases data whose truth is known, the seed count against hand-computed values, and
the claim text (distillation/evaluate/lesions.py, distillation/study/analysis.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from distillation.evaluate.lesions import LesionCounts, lesion_detection, lesion_values, pooled_f1
from distillation.evaluate.run import evaluate_lesions
from distillation.study.analysis import (
    Interval,
    arm_data,
    claim,
    compare,
    detectable_effect,
    hierarchical_bootstrap,
    main,
    paired,
    pilot_spread,
    seeds_needed,
)

SPACING = (2.0, 2.0, 2.0)  # 8 mm³ a voxel: 1 ml = 125 voxels


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Reference: a large lesion (216 voxels, 1.728 ml), a small one (8 voxels) and a small one (2 voxels
    touching at a corner: one lesion under 26-connectivity). Prediction: one voxel on the large lesion,
    one voxel on the 8-voxel lesion, a 1-voxel speck and a 150-voxel blob (1.2 ml) on nothing."""
    ref = np.zeros((30, 30, 30), dtype=bool)
    pred = np.zeros_like(ref)
    ref[2:8, 2:8, 2:8] = True          # large, detected
    ref[20:22, 20:22, 20:22] = True    # small, detected
    ref[12, 25, 25] = ref[13, 26, 26] = True  # small, missed; corner neighbours
    pred[4, 4, 4] = True
    pred[21, 21, 21] = True
    pred[28, 2, 28] = True              # small false positive
    pred[10:15, 10:15, 2:8] = True      # large false positive
    return pred, ref


def test_detection_counts_lesions_found_missed_and_invented() -> None:
    pred, ref = _scene()
    d = lesion_detection(pred, ref, SPACING)
    assert d.all == LesionCounts(tp=2, fp=2, fn=1)
    assert d.small == LesionCounts(tp=1, fp=1, fn=1)  # the blob is a false positive, but not a small one
    assert sorted(d.reference_ml) == pytest.approx([0.016, 0.064, 1.728])  # 3 lesions: corners join
    assert d.small.f1 == 0.5  # 2·1 / (2·1 + 1 + 1)
    assert d.all.f1 == pytest.approx(4 / 7)
    # the threshold moves the large lesion and the blob into "small"
    big = lesion_detection(pred, ref, SPACING, small_ml=2.0)
    assert big.small == LesionCounts(tp=2, fp=2, fn=1)


def test_fragments_within_two_voxels_are_one_lesion() -> None:
    ref = np.zeros((5, 5, 20), dtype=bool)
    ref[2, 2, [0, 3, 7]] = True  # gaps of 2 voxels (merged) and 3 voxels (apart)
    assert len(lesion_detection(ref, ref, SPACING).reference_ml) == 2
    assert len(lesion_detection(ref, ref, SPACING, merge_voxels=0).reference_ml) == 3
    pred = np.zeros_like(ref)
    pred[2, 2, [3, 5]] = True  # a fragmented prediction on the first lesion is one detection, no false positive
    assert lesion_detection(pred, ref, SPACING).all == LesionCounts(tp=1, fp=0, fn=1)


def test_detection_of_nothing_is_undefined_and_pooling_sums_counts_first() -> None:
    empty = np.zeros((5, 5, 5), dtype=bool)
    assert lesion_detection(empty, empty, SPACING).all == LesionCounts(0, 0, 0)
    assert LesionCounts().f1 is None
    # per-case F1s 1.0 and 0.0 would average 0.5; pooled: 2·1 / (2·1 + 0 + 3) = 0.4
    assert pooled_f1([LesionCounts(1, 0, 0), {"tp": 0, "fp": 0, "fn": 3}]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match=r"share one grid, got shapes \(5, 5, 5\) and \(4, 5, 5\)"):
        lesion_detection(empty, empty[1:], SPACING)


def test_lesions_are_the_whole_tumour_of_label_maps() -> None:
    labels = {"edema": 1, "necrotic core": 2, "enhancing tumor": 3, "thalamus": 9}
    regions = {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3)}
    assert lesion_values(labels, regions) == (1, 2, 3)
    assert lesion_values({"liver": 1, "liver lesion": 5}) == (5,)
    assert lesion_values({"liver": 1, "spleen": 2}) == ()
    ref = np.zeros((12, 12, 12), dtype=np.uint8)
    ref[1:4, 1:4, 1:3], ref[1:4, 1:4, 3:5] = 1, 3  # edema beside enhancing: one lesion
    ref[9, 9, 9] = 9  # a structure, not a lesion
    pred = np.zeros_like(ref)
    pred[2, 2, 4] = 3
    pred[9, 9, 9] = 9
    out = evaluate_lesions({"c": pred}, {"c": ref}, {"c": SPACING}, lesion_values(labels, regions))
    assert out["cases"]["c"]["all"] == {"tp": 1, "fp": 0, "fn": 0}
    assert out["summary"]["small"] == {"tp": 1, "fp": 0, "fn": 0, "f1": 1.0}
    assert out["settings"]["small_ml"] == 1.0 and out["settings"]["lesion_labels"] == [1, 2, 3]
    assert out["settings"]["merge_voxels"] == 1
    assert evaluate_lesions({"c": pred}, {"c": ref}, {"c": SPACING}, ()) == {}


def _arms(rng: np.random.Generator, seeds: int, cases: int, effect: float, seed_sd: float = 0.01,
          noise: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Two arms on shared cases: case difficulty (shared), a seed effect per arm, case noise per model."""
    case = rng.normal(0.8, 0.08, cases)
    arm = [case + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, noise, (seeds, cases)) for _ in range(2)]
    return arm[0] + effect, arm[1]


def test_bootstrap_interval_covers_a_known_difference() -> None:
    rng = np.random.default_rng(7)
    covered, plain_covered = 0, 0
    for trial in range(40):
        a, b = _arms(rng, 5, 60, effect=0.03)
        interval = hierarchical_bootstrap(a, b, replicates=2000, seed=trial)
        plain = hierarchical_bootstrap(a, b, replicates=2000, seed=trial, expand=False)
        assert interval.low < plain.low < interval.estimate < plain.high < interval.high
        covered += interval.low <= 0.03 <= interval.high
        plain_covered += plain.low <= 0.03 <= plain.high
    assert covered >= 37  # a 95 % interval: 38 of 40 expected
    assert plain_covered < covered  # five seeds: the plain percentile interval is too narrow


def test_bootstrap_interval_narrows_with_more_cases_and_is_deterministic() -> None:
    a, b = _arms(np.random.default_rng(3), 5, 400, effect=0.02, seed_sd=0.001, noise=0.05)  # cases dominate
    few = hierarchical_bootstrap(a[:, :25], b[:, :25], replicates=1000, seed=1)
    many = hierarchical_bootstrap(a, b, replicates=1000, seed=1)
    assert many.high - many.low < 0.6 * (few.high - few.low)
    assert hierarchical_bootstrap(a, b, replicates=1000, seed=1) == many
    assert hierarchical_bootstrap(a, b, replicates=1000, seed=2) != many
    assert (many.seeds, many.cases, many.difference) == (5, 400, True)
    assert many.estimate == pytest.approx(float((a - b).mean()))


def test_bootstrap_of_detection_pools_counts() -> None:
    counts = np.zeros((2, 3, 3))
    counts[:, :, 0] = 1  # every seed and case: one TP ...
    counts[0, 0, 2] = 2  # ... and seed 0, case 0 misses two
    single = hierarchical_bootstrap(counts, detection=True, replicates=200)
    assert single.estimate == pytest.approx(2 * 6 / (2 * 6 + 2))
    assert single.difference is False and single.high <= 1.0
    with pytest.raises(ValueError, match=r"seeds × cases × \(TP, FP, FN\)"):
        hierarchical_bootstrap(counts[..., 0], detection=True)


def _rows() -> list[dict]:
    rows = []
    for kd, shift in (("none", 0.0), ("logit", 0.05)):
        for seed in (0, 1, 2):
            case_dice = {f"c{i}": {"whole_tumor": 0.7 + shift + 0.01 * i, "tumor_core": 0.6 + shift}
                         for i in range(4)}
            lesions = {f"c{i}": {"all": {"tp": 1, "fp": 0, "fn": 0},
                                 "small": {"tp": int(kd == "logit"), "fp": 0, "fn": int(kd == "none")}}
                       for i in range(4)}
            rows.append({"run": f"w0.25-{kd}-s{seed}", "role": "student", "width": 0.25, "kd": kd, "seed": seed,
                         "structures": ["whole_tumor", "tumor_core"], "case_dice": case_dice,
                         "case_hd95": {c: {"whole_tumor": "inf" if c == "c3" else 2.0, "tumor_core": 1.0}
                                       for c in case_dice},
                         "case_lesions": lesions})
    return rows


def test_arms_are_read_from_a_study_s_rows_and_compared_paired() -> None:
    rows = _rows()
    budget = {**rows[0], "run": "w0.25-none-l8-s0", "label_budget": 8, "case_dice": {"c0": {"whole_tumor": 0.1,
                                                                                           "tumor_core": 0.1}}}
    rows.append(budget)  # a label-budget run of the same recipe is another arm
    none = arm_data(rows, 0.25, "none")
    assert (none.seeds, none.cases) == ((0, 1, 2), ("c0", "c1", "c2", "c3"))
    assert arm_data(rows, 0.25, "none", labels=8).values.tolist() == [[0.1]]
    assert none.values[0, 1] == pytest.approx((0.71 + 0.6) / 2)  # mean over the row's regions
    interval, text = compare(rows, (0.25, "logit"), (0.25, "none"), label="KD − no KD at 1/4", replicates=200)
    assert interval.estimate == pytest.approx(0.05)  # every paired difference is 0.05: a point interval
    assert (interval.low, interval.high) == pytest.approx((0.05, 0.05))
    assert text == "KD − no KD at 1/4: +0.050 [0.050, 0.050] (95% hierarchical bootstrap, 3 seeds × 4 cases)"
    f1, _ = compare(rows, (0.25, "logit"), (0.25, "none", None), metric="small_lesion_f1", replicates=200)
    assert (f1.estimate, f1.low, f1.high) == (1.0, 1.0, 1.0)
    hd_a, hd_b = paired(arm_data(rows, 0.25, "logit", "hd95:whole_tumor"), arm_data(rows, 0.25, "none",
                                                                                     "hd95:whole_tumor"))
    assert hd_a.cases == ("c0", "c1", "c2")  # c3's HD95 is infinite: dropped from both arms
    rows[0].pop("case_lesions")
    rows.pop()
    with pytest.raises(ValueError, match="needs per-case results \\(case_lesions\\) in every row, got none in "
                                         "run w0.25-none-s0"):
        arm_data(rows, 0.25, "none", "small_lesion_f1")
    with pytest.raises(ValueError, match=r"got none for 0.5:none \(have: 0.25:logit, 0.25:none\)"):
        arm_data(rows, 0.5, "none")


def test_seeds_needed_matches_the_normal_approximation_by_hand() -> None:
    z = 1.959964 + 0.841621  # z(0.975) + z(0.8), from the normal table
    # σ_d = 1 (seed SD √½ of each arm, no case noise), effect 0.5: ((z · 1) / 0.5)² = 31.4 → 32
    assert math.ceil((z / 0.5) ** 2) == 32
    assert seeds_needed(0.5, math.sqrt(0.5), 0.0, pilot_cases=1, cases=1, t=False) == 32
    assert seeds_needed(0.5, math.sqrt(0.5), 0.0, pilot_cases=1, cases=1) == 34  # t quantiles, as G*Power's 34
    # a pilot: seed SD 0.02 over 24 cases, case SD 0.1; study: 100 cases, effect 0.02
    var_d = 2 * (0.02 ** 2 - 0.1 ** 2 / (2 * 24)) + 0.1 ** 2 / 100
    assert math.ceil(z ** 2 * var_d / 0.02 ** 2) == 10
    assert seeds_needed(0.02, 0.02, 0.1, pilot_cases=24, cases=100, t=False) == 10
    t11 = 2.200985 + 0.875539  # t(0.975, 11) + t(0.8, 11): 12 seeds is the first n that meets n ≥ (t σ_d / δ)²
    assert 11 < (2.228139 + 0.879058) ** 2 * var_d / 0.02 ** 2 and t11 ** 2 * var_d / 0.02 ** 2 <= 12
    assert seeds_needed(0.02, 0.02, 0.1, pilot_cases=24, cases=100) == 12
    assert seeds_needed(0.02, 0.005, 0.1, pilot_cases=24, cases=100) == 5  # never fewer than 5
    assert detectable_effect(12, 0.02, 0.1, pilot_cases=24, cases=100) <= 0.02
    assert detectable_effect(11, 0.02, 0.1, pilot_cases=24, cases=100) > 0.02
    with pytest.raises(ValueError, match="effect must be positive"):
        seeds_needed(0.0, 0.02, 0.1, pilot_cases=24, cases=100)


def test_pilot_spread_of_two_seeds() -> None:
    v = np.array([[0.80, 0.90, 0.70], [0.84, 0.92, 0.78]])
    spread = pilot_spread(v)
    assert spread["seed_sd"] == pytest.approx(abs(0.8 - 0.8466667) / math.sqrt(2), rel=1e-5)
    assert spread["case_sd"] == pytest.approx(float(np.std(v[1] - v[0], ddof=1)))  # two seeds: SD of the difference
    assert (spread["cases"], spread["seeds"]) == (3, 2)
    with pytest.raises(ValueError, match=r"at least two seeds × two cases, got shape \(1, 3\)"):
        pilot_spread(v[:1])


def test_claim_names_its_interval() -> None:
    interval = Interval(0.012, -0.004, 0.029, 0.95, 5, 100, 10_000, True)
    assert claim("KD − no KD at 1/4", interval) == (
        "KD − no KD at 1/4: +0.012 [−0.004, 0.029] (95% hierarchical bootstrap, 5 seeds × 100 cases)")
    down = Interval(-0.0204, -0.05, -0.0001, 0.975, 6, 120, 10_000, True)
    assert claim("x", down) == "x: −0.020 [−0.050, 0.000] (97.5% hierarchical bootstrap, 6 seeds × 120 cases)"
    level = Interval(0.8123, 0.79, 0.83, 0.95, 5, 100, 10_000, False)
    assert claim("no KD at 1/4, mean Dice", level).startswith("no KD at 1/4, mean Dice: 0.812 [0.790, 0.830]")


def test_command_line_compares_arms_and_sizes_the_study(tmp_path, capsys) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"study": {}, "rows": _rows()}))
    assert main(["compare", str(results), "--a", "0.25:logit", "--b", "0.25:none", "--replicates", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["claim"].startswith("0.25:logit − 0.25:none, mean_dice: +0.050 [0.050, 0.050]")
    assert main(["power", str(results), "--arm", "0.25:none", "--effect", "0.02", "--min-seed-sd", "0.02"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["seed_sd"], out["case_sd"], out["seed_sd_used"]) == pytest.approx((0, 0, 0.02))  # the floor
    assert out["seeds_per_arm"] == seeds_needed(0.02, 0.02, 0.0, pilot_cases=4, cases=100) > 5


def test_the_preregistered_preset_is_the_design_docs_study_md_states() -> None:
    from pathlib import Path

    from distillation.study import load_study

    study = load_study("study-brain-hard")
    d = study.dataset
    assert (d.kind, d.setting, d.cases, d.test_cases, d.seed) == ("brain", "hard", 200, 100, 6000)
    arms: dict[tuple, list[int]] = {}
    for k in study.student_runs():
        arms.setdefault((k.width, k.kd, k.labels), []).append(k.seed)
    primary = {a: s for a, s in arms.items() if a[0] == 0.25}
    assert set(primary) == {(0.25, "none", None), (0.25, "recokd-ours", None), (0.25, "recokd-public", None),
                            (0.25, "logit", 0), (0.25, "logit", 8), (0.25, "none", 8)}
    assert len({tuple(s) for s in primary.values()}) == 1 and len(primary[(0.25, "none", None)]) >= 5  # paired
    assert {a[0] for a in arms} == {0.5, 0.25, 0.125}
    assert study.report.stem != "study"  # its report never overwrites docs/study.md
    text = (Path(__file__).resolve().parents[1] / "docs" / "study.md").read_text(encoding="utf-8")
    assert "**Committed before any study run, 2026-12-03.**" in text
    assert "`[dataset] seed = 6000`" in text and "200 training + 100 held-out" in text


def test_no_study_report_may_overwrite_docs_study_md() -> None:
    from distillation.study.config import parse_study
    from pacsnode.errors import ConfigError

    with pytest.raises(ConfigError, match=r"report.stem must be letters, digits, '-' or '_', other than 'study' "
                                          r"\(docs/study.md is written by hand\), got 'study'"):
        parse_study({"report": {"stem": "study"}})
    assert parse_study({}).report.stem == "study-run"
