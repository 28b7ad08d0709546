"""The study's analysis (docs/study.md, preregistration): intervals over seeds × cases, the seeds a
comparison needs, and claims that name their interval.

* :func:`arm_data` reads one arm (width, KD recipe, label budget) out of a study's rows (its results
  file; an arm is written ``WIDTH:RECIPE`` or ``WIDTH:RECIPE:LABELS`` as in a study preset's runs): a
  seeds × cases matrix of a per-case value (mean Dice over the regions, one region's Dice or HD95),
  or seeds × cases × (TP, FP, FN) for lesion detection (:mod:`distillation.evaluate.lesions`).
* :func:`hierarchical_bootstrap`: each replicate draws the seeds with replacement, then, for each
  drawn seed, the cases with replacement; the statistic is the mean over the drawn (seed, case)
  values, or for detection the pooled F1 of the summed counts. Given a second arm it is the paired
  difference: both arms take the same drawn seeds and cases in every replicate (seed s of one arm
  is set against seed s of the other: same initialisation and patch order). The interval is the
  *expanded* percentile interval (Hesterberg 2015, "What teachers should know about the bootstrap",
  The American Statistician 69(4)): with n seeds the percentiles taken are Φ(∓√(n/(n−1))·t₁₋α/₂,ₙ₋₁)
  instead of α/2 and 1 − α/2. With five seeds the plain percentile interval is too narrow where
  seeds dominate the spread (the bootstrap's seed variance is (n−1)/n of the sample's and its tails
  normal, not t on n − 1 degrees of freedom). In 200 simulated paired studies of 5 seeds × 60 cases
  (tests/test_study_analysis.py's generator) the nominal 95 % intervals covered the true difference
  89 % of the time plain and 96.5 % expanded with seed effects dominating; 96.5 % and 100 % with case
  noise dominating (resampling cases within each drawn seed counts their spread once per seed, so it
  errs wide there). The generator is seeded, so the same call gives the same interval.
* :func:`seeds_needed`: seeds per arm for a paired comparison, from a pilot's between-seed SD and
  case-level spread (:func:`pilot_spread`); never fewer than ``minimum`` (5).
* :func:`claim`: ``"KD − no KD at 1/4: +0.012 [−0.004, 0.029] (95% hierarchical bootstrap, 5 seeds ×
  100 cases)"``.

Command line, on a study's results file::

    python -m distillation.study.analysis compare RESULTS.json --a 0.25:logit+sard+ca --b 0.25:none
    python -m distillation.study.analysis power RESULTS.json --arm 0.25:none --effect 0.02 --cases 100
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Interval", "ArmData", "arm_data", "paired", "hierarchical_bootstrap", "pilot_spread", "interval_sentence",
           "seeds_needed", "detectable_effect", "claim", "compare", "DETECTION_METRICS", "main"]

DETECTION_METRICS = {"small_lesion_f1": "small", "lesion_f1": "all"}
REPLICATES = 10_000
_CHUNK = 500  # replicates drawn at once (bounds memory: chunk × seeds × cases values)


@dataclass(frozen=True)
class ArmData:
    """One arm's per-case values: ``values[i, j]`` is seed ``seeds[i]`` on case ``cases[j]`` (a trailing
    axis of TP, FP, FN for a detection metric)."""

    label: str
    metric: str
    seeds: tuple[int, ...]
    cases: tuple[str, ...]
    values: np.ndarray

    def subset(self, seeds: Sequence[int], cases: Sequence[str]) -> ArmData:
        si = [self.seeds.index(s) for s in seeds]
        ci = [self.cases.index(c) for c in cases]
        return ArmData(self.label, self.metric, tuple(seeds), tuple(cases), self.values[np.ix_(si, ci)])


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float
    seeds: int
    cases: int
    replicates: int
    difference: bool

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level,
                "seeds": self.seeds, "cases": self.cases, "replicates": self.replicates,
                "difference": self.difference}


def _case_value(row: Mapping[str, Any], case: str, metric: str) -> Any:
    if metric in DETECTION_METRICS:
        counts = row["case_lesions"][case][DETECTION_METRICS[metric]]
        return [counts["tp"], counts["fp"], counts["fn"]]
    if metric.startswith("hd95:"):
        v = row["case_hd95"][case].get(metric[5:])
        return math.nan if v is None or v == "inf" or (isinstance(v, float) and math.isinf(v)) else float(v)
    dice = row["case_dice"][case]
    if metric == "mean_dice":
        values = [dice.get(s) for s in row["structures"]]
        return math.nan if any(v is None for v in values) else statistics.fmean(values)
    v = dice.get(metric)
    return math.nan if v is None else float(v)


def _field(metric: str) -> str:
    return ("case_lesions" if metric in DETECTION_METRICS else "case_hd95" if metric.startswith("hd95:")
            else "case_dice")


def _arm_name(width: float, kd: str, labels: int | None) -> str:
    return f"{width:g}:{kd}" + ("" if labels is None else f":{labels}")


def arm_data(rows: Sequence[Mapping[str, Any]], width: float, kd: str, metric: str = "mean_dice",
             labels: int | None = None, label: str = "") -> ArmData:
    """The seeds × cases matrix of one arm (rows of that width, KD recipe and label budget, ``None``
    for every label; the teacher is width 1, KD ``"-"``) on the held-out cases every seed of it was
    scored on. ``metric``: ``mean_dice`` (mean over the row's regions), a region (``whole_tumor``),
    ``hd95:REGION`` (infinite → NaN), or ``small_lesion_f1`` / ``lesion_f1`` (TP, FP, FN per case)."""
    arm = sorted((r for r in rows if abs(float(r["width"]) - width) < 1e-9 and r["kd"] == kd
                  and r.get("label_budget") == labels), key=lambda r: int(r["seed"]))
    if not arm:
        have = sorted({_arm_name(float(r["width"]), r["kd"], r.get("label_budget")) for r in rows})
        raise ValueError(f"an arm must have finished rows, got none for {_arm_name(width, kd, labels)} "
                         f"(have: {', '.join(have)})")
    field = _field(metric)
    for r in arm:
        if not r.get(field):
            raise ValueError(f"{metric} needs per-case results ({field}) in every row, got none in run "
                             f"{r['run']}: its evaluation predates them; measure it again")
    cases = sorted(set.intersection(*(set(r[field]) for r in arm)))
    if not cases:
        raise ValueError(f"the seeds of {_arm_name(width, kd, labels)} must share held-out cases, got none in "
                         "common")
    values = np.array([[_case_value(r, c, metric) for c in cases] for r in arm], dtype=float)
    return ArmData(label or _arm_name(width, kd, labels), metric, tuple(int(r["seed"]) for r in arm), tuple(cases), values)


def paired(a: ArmData, b: ArmData) -> tuple[ArmData, ArmData]:
    """Both arms on their common seeds and cases, without the cases where either has a missing value
    (an infinite HD95) on any seed."""
    seeds = sorted(set(a.seeds) & set(b.seeds))
    cases = sorted(set(a.cases) & set(b.cases))
    if not seeds or not cases:
        raise ValueError(f"a paired comparison needs common seeds and cases, got seeds {a.seeds} vs {b.seeds} "
                         f"and {len(cases)} common cases")
    a, b = a.subset(seeds, cases), b.subset(seeds, cases)
    axes = (0, 2) if a.values.ndim == 3 else (0,)  # over seeds (and the TP, FP, FN axis): one flag per case
    ok = ~(np.isnan(a.values).any(axis=axes) | np.isnan(b.values).any(axis=axes))
    keep = [c for c, k in zip(cases, ok, strict=True) if k]
    return a.subset(seeds, keep), b.subset(seeds, keep)


def _statistic(sample: np.ndarray, detection: bool) -> np.ndarray:
    """Per replicate (first axis): the mean of the (seed, case) values, or the pooled F1 of the counts."""
    if not detection:
        return sample.mean(axis=(1, 2))
    tp, fp, fn = (sample[..., k].sum(axis=(1, 2)) for k in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)


def _tails(level: float, n_seeds: int, expand: bool) -> tuple[float, float]:
    """The percentiles (0-100) of the interval: plain, or expanded for ``n_seeds`` seeds."""
    if not expand or n_seeds < 2:
        return 100 * (1 - level) / 2, 100 * (1 + level) / 2
    from scipy import stats

    q = math.sqrt(n_seeds / (n_seeds - 1)) * float(stats.t.ppf((1 + level) / 2, n_seeds - 1))
    tail = 100 * float(stats.norm.cdf(-q))
    return tail, 100 - tail


def hierarchical_bootstrap(a: ArmData | np.ndarray, b: ArmData | np.ndarray | None = None, *,
                           detection: bool | None = None, level: float = 0.95, replicates: int = REPLICATES,
                           seed: int = 0, expand: bool = True) -> Interval:
    """Expanded (``expand``, the default) or plain percentile interval of ``a``'s statistic, or of
    ``a − b`` paired by seed and case, over replicates that resample seeds, then cases within each
    drawn seed (see the module docstring). Arrays are seeds × cases (× TP, FP, FN when ``detection``)."""
    if detection is None:
        detection = isinstance(a, ArmData) and a.metric in DETECTION_METRICS
    va = a.values if isinstance(a, ArmData) else np.asarray(a, dtype=float)
    vb = None if b is None else (b.values if isinstance(b, ArmData) else np.asarray(b, dtype=float))
    want = 3 if detection else 2
    if va.ndim != want or (detection and va.shape[-1] != 3) or (vb is not None and vb.shape != va.shape):
        raise ValueError(f"values must be seeds × cases{' × (TP, FP, FN)' if detection else ''} and both arms "
                         f"one shape, got {va.shape}" + ("" if vb is None else f" and {vb.shape}"))
    if not 0 < level < 1 or replicates < 100:
        raise ValueError(f"level must lie in (0, 1) and replicates be at least 100, got {level} and {replicates}")
    if any(np.isnan(v).any() for v in (va, vb) if v is not None):
        raise ValueError("values must have no missing entry (NaN): take paired() arms, which drop such cases")
    n_seeds, n_cases = va.shape[:2]
    if not detection and n_seeds * n_cases == 0:
        raise ValueError("values must hold at least one seed and one case")

    def stat(sample_a: np.ndarray, sample_b: np.ndarray | None) -> np.ndarray:
        s = _statistic(sample_a, detection)
        return s if sample_b is None else s - _statistic(sample_b, detection)

    estimate = float(stat(va[None], None if vb is None else vb[None])[0])
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, replicates, _CHUNK):
        n = min(_CHUNK, replicates - start)
        seed_idx = rng.integers(n_seeds, size=(n, n_seeds))
        case_idx = rng.integers(n_cases, size=(n, n_seeds, n_cases))
        pick = (seed_idx[:, :, None], case_idx)
        out.append(stat(va[pick], None if vb is None else vb[pick]))
    draws = np.concatenate(out)
    draws = draws[np.isfinite(draws)]  # F1 undefined in a replicate with no lesion and no false positive
    low, high = np.percentile(draws, _tails(level, n_seeds, expand))
    return Interval(estimate, float(low), float(high), level, n_seeds, n_cases, replicates, vb is not None)


def pilot_spread(values: np.ndarray | ArmData) -> dict[str, float]:
    """From a pilot arm's seeds × cases matrix (at least two seeds): ``seed_sd``, the sample SD of the
    per-seed means, and ``case_sd``, the SD over cases of a paired difference between two models of equal
    quality (√2 × the residual SD of the two-way seeds + cases layout); ``cases``, the pilot's case count."""
    v = values.values if isinstance(values, ArmData) else np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[0] < 2 or v.shape[1] < 2:
        raise ValueError(f"a pilot must give at least two seeds × two cases, got shape {v.shape}")
    resid = v - v.mean(axis=1, keepdims=True) - v.mean(axis=0, keepdims=True) + v.mean()
    var_e = float((resid ** 2).sum()) / ((v.shape[0] - 1) * (v.shape[1] - 1))
    return {"seed_sd": float(np.std(v.mean(axis=1), ddof=1)), "case_sd": math.sqrt(2 * var_e),
            "cases": float(v.shape[1]), "seeds": float(v.shape[0])}


def _seed_sd_of_difference(seed_sd: float, case_sd: float, pilot_cases: int, cases: int) -> float:
    """SD of one seed's paired arm difference averaged over ``cases`` cases: twice the seed-level variance
    (the pilot's per-seed-mean variance less its case noise) plus the case noise at ``cases``."""
    if min(seed_sd, case_sd) < 0 or pilot_cases < 1 or cases < 1:
        raise ValueError(f"SDs must be non-negative and case counts positive, got seed_sd {seed_sd}, "
                         f"case_sd {case_sd}, pilot_cases {pilot_cases}, cases {cases}")
    var_seed = max(seed_sd ** 2 - case_sd ** 2 / (2 * pilot_cases), 0.0)
    return math.sqrt(2 * var_seed + case_sd ** 2 / cases)


def _quantiles(alpha: float, power: float, n: int | None) -> float:
    from scipy import stats

    if n is None:
        return float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    return float(stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1))


def seeds_needed(effect: float, seed_sd: float, case_sd: float, *, pilot_cases: int, cases: int,
                 alpha: float = 0.05, power: float = 0.8, minimum: int = 5, t: bool = True) -> int:
    """Seeds per arm for a two-sided paired comparison to detect ``effect`` with ``power`` at ``alpha``:
    n = ((z₁₋α/₂ + z_power) σ_d / effect)² with σ_d the SD of one seed's paired difference over ``cases``
    cases; with ``t`` the z quantiles become t quantiles on n − 1 degrees of freedom (the smallest n that
    satisfies it), which matters at a handful of seeds. Never fewer than ``minimum``."""
    if effect <= 0 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"effect must be positive, alpha and power in (0, 1), got {effect}, {alpha}, {power}")
    sd = _seed_sd_of_difference(seed_sd, case_sd, pilot_cases, cases)
    n = max(2, math.ceil((_quantiles(alpha, power, None) * sd / effect) ** 2))
    while t and n < (_quantiles(alpha, power, n) * sd / effect) ** 2:
        n += 1
    return max(n, minimum)


def detectable_effect(seeds: int, seed_sd: float, case_sd: float, *, pilot_cases: int, cases: int,
                      alpha: float = 0.05, power: float = 0.8, t: bool = True) -> float:
    """The smallest effect ``seeds`` seeds per arm detect with ``power`` at ``alpha`` (the inverse of
    :func:`seeds_needed`)."""
    if seeds < 2:
        raise ValueError(f"seeds must be at least 2, got {seeds}")
    sd = _seed_sd_of_difference(seed_sd, case_sd, pilot_cases, cases)
    return _quantiles(alpha, power, seeds if t else None) * sd / math.sqrt(seeds)


def _signed(v: float, digits: int) -> str:
    text = f"{abs(v):.{digits}f}"
    return ("−" if v < 0 and float(text) != 0 else "+") + text


def _plain(v: float, digits: int) -> str:
    text = f"{abs(v):.{digits}f}"
    return ("−" if v < 0 and float(text) != 0 else "") + text


def claim(label: str, interval: Interval, digits: int = 3) -> str:
    """A sentence that names its interval: ``"LABEL: +0.012 [−0.004, 0.029] (95% hierarchical bootstrap,
    5 seeds × 100 cases)"`` (a difference is signed)."""
    est = _signed(interval.estimate, digits) if interval.difference else _plain(interval.estimate, digits)
    return (f"{label}: {est} [{_plain(interval.low, digits)}, {_plain(interval.high, digits)}] "
            f"({100 * interval.level:g}% hierarchical bootstrap, {interval.seeds} seeds × {interval.cases} cases)")


Arm = tuple[float, str] | tuple[float, str, int | None]


def _read_arm(rows: Sequence[Mapping[str, Any]], arm: Arm, metric: str) -> ArmData:
    width, kd, *budget = arm
    return arm_data(rows, width, kd, metric=metric, labels=budget[0] if budget else None)


def compare(rows: Sequence[Mapping[str, Any]], a: Arm, b: Arm, *, metric: str = "mean_dice", label: str = "",
            level: float = 0.95, replicates: int = REPLICATES, seed: int = 0) -> tuple[Interval, str]:
    """Arm ``a`` − arm ``b`` (each ``(width, kd)`` or ``(width, kd, label budget)``) paired by seed and
    case: the interval and its claim."""
    arm_a, arm_b = paired(_read_arm(rows, a, metric), _read_arm(rows, b, metric))
    interval = hierarchical_bootstrap(arm_a, arm_b, level=level, replicates=replicates, seed=seed)
    return interval, claim(label or f"{arm_a.label} − {arm_b.label}, {metric}", interval)


def interval_sentence(rows: Sequence[dict[str, Any]], kd: dict[str, Any], none: dict[str, Any]) -> tuple[str, bool | None]:
    """The paired hierarchical-bootstrap claim for KD − no KD (mean Dice) and whether its interval lies
    above 0; ``("", None)`` without per-case results or two shared seeds, said in the text."""
    if len(set(kd["seeds"]) & set(none["seeds"])) < 2:
        return " No interval: fewer than two seeds shared with no KD.", None
    try:
        interval, text = compare(rows, (kd["width"], kd["kd"]), (none["width"], "none"),
                                 label=f"KD − no KD at 1/{round(1 / kd['width']):d}, mean Dice")
    except ValueError as exc:
        return f" No interval: {exc}.", None
    return f" {text}" + ("" if interval.low > 0 else ": the interval includes 0") + ".", interval.low > 0


def _arm(text: str) -> tuple[float, str, int | None]:
    width, _, rest = text.partition(":")
    kd, colon, budget = rest.partition(":")
    try:
        return float(width), kd, int(budget) if colon else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"an arm must be WIDTH:RECIPE or WIDTH:RECIPE:LABELS (e.g. 0.25:none), "
                                         f"got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distillation.study.analysis", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="paired hierarchical-bootstrap interval of arm A − arm B")
    c.add_argument("results", type=Path)
    c.add_argument("--a", type=_arm, required=True)
    c.add_argument("--b", type=_arm, required=True)
    c.add_argument("--metric", default="mean_dice")
    c.add_argument("--level", type=float, default=0.95)
    c.add_argument("--replicates", type=int, default=REPLICATES)
    c.add_argument("--seed", type=int, default=0)
    w = sub.add_parser("power", help="seeds per arm from a pilot arm's spread")
    w.add_argument("results", type=Path)
    w.add_argument("--arm", type=_arm, required=True)
    w.add_argument("--metric", default="mean_dice")
    w.add_argument("--effect", type=float, default=0.02)
    w.add_argument("--cases", type=int, default=100, help="held-out cases of the study")
    w.add_argument("--alpha", type=float, default=0.05)
    w.add_argument("--power", type=float, default=0.8)
    w.add_argument("--min-seed-sd", type=float, default=0.0, help="a floor for the pilot's between-seed SD")
    args = p.parse_args(argv)
    rows = json.loads(args.results.read_text(encoding="utf-8"))["rows"]
    if args.command == "compare":
        interval, text = compare(rows, args.a, args.b, metric=args.metric, level=args.level,
                                 replicates=args.replicates, seed=args.seed)
        sys.stdout.write(json.dumps({"claim": text, **interval.to_dict()}, ensure_ascii=False) + "\n")
        return 0
    spread = pilot_spread(_read_arm(rows, args.arm, args.metric))
    seed_sd = max(spread["seed_sd"], args.min_seed_sd)
    n = seeds_needed(args.effect, seed_sd, spread["case_sd"], pilot_cases=int(spread["cases"]), cases=args.cases,
                     alpha=args.alpha, power=args.power)
    sys.stdout.write(json.dumps({**spread, "seed_sd_used": seed_sd, "effect": args.effect, "cases_study": args.cases,
                                 "alpha": args.alpha, "power": args.power, "seeds_per_arm": n}) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
