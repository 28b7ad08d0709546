"""The study's report: a markdown table, the targets as measured, and three matplotlib (Agg) plots.

Rows of the same (width, KD recipe) over several seeds are summarised as mean ± sample standard
deviation (``±`` is omitted for a single seed). The targets of issue 7 are evaluated from the
numbers, never asserted: width 1/4 with KD keeps ≥ 98.7 % of the teacher's mean Dice; KD beats no KD
at the same width on each region; width 1/4 CPU latency per case ≥ 67 % below the teacher's. The KD
targets are judged on the full recipe (logit + MS-SARD + MS-CA: the method; the single terms are its
ablation), fixed before any result, so no recipe is picked on the cases it is scored on; the other
recipes are listed beside it. Without a full-recipe run, the KD run that shares most seeds with the
no-KD run is taken (a one-seed run is not set against a three-seed mean), then the best validation Dice.
"""

from __future__ import annotations

import math
import os
import statistics
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distillation.study.baseline_row import load_baseline
from distillation.study.config import StudyConfig
from distillation.study.failures import failure_lines

__all__ = ["summarise", "targets", "write_report", "TABLE_COLUMNS"]

TABLE_COLUMNS = ("model", "width", "KD", "seeds", "parameters", "GFLOPs/window", "mean Dice",
                 "latency/window (s)", "latency/case (s)")


def _stats(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (role, width, kd): means and spreads over seeds of every measured field."""
    groups: dict[tuple[str, float, str, int | None], list[dict[str, Any]]] = {}
    for r in rows:  # a label budget is an arm of its own (docs/label-free.md), never pooled with full labels
        groups.setdefault((r["role"], float(r["width"]), r["kd"], r.get("label_budget")), []).append(r)
    out = []
    for (role, width, kd, budget), rs in groups.items():
        structures = rs[0]["structures"]
        entry: dict[str, Any] = {"role": role, "width": width, "kd": kd, "label_budget": budget,
                                 "seeds": sorted(r["seed"] for r in rs),
                                 "structures": structures, "parameters": rs[0]["parameters"],
                                 "gflops_per_window": rs[0]["gflops_per_window"]}
        for field in ("mean_dice", "latency_window_s", "latency_case_s", "final_val_dice", "val_case_dice",
                      "train_seconds"):
            entry[field] = _stats([r.get(field) for r in rs])
        entry["dice"] = {s: _stats([r["dice"].get(s) for r in rs]) for s in structures}
        entry["hd95"] = {s: _stats([r["hd95"].get(s) for r in rs]) for s in structures}
        entry["seed_dice"] = {r["seed"]: r["dice"] for r in rs}
        entry["curves"] = [(r["seed"], r.get("curve", [])) for r in rs]
        out.append(entry)
    order = {"teacher": 0, "student": 1}
    kd_order = ["none", "logit", "sard", "ca", "logit+sard+ca"]
    out.sort(key=lambda e: (order[e["role"]], -e["width"], e["label_budget"] is not None, e["label_budget"] or 0,
                            kd_order.index(e["kd"]) if e["kd"] in kd_order else 9, e["kd"]))
    return out


def _fmt(stat: tuple[float | None, float | None], digits: int = 3) -> str:
    mean, spread = stat
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread is not None else "")


def _width(w: float) -> str:
    return "1 (teacher)" if w == 1 else f"1/{round(1 / w):d}" if abs(1 / w - round(1 / w)) < 1e-6 else f"{w:g}"


def _paired_counts(kd: dict[str, Any], none: dict[str, Any]) -> str:
    """Seed by seed (same seed: same initialisation and patch order), on how many seeds KD is ahead per
    region: ``"(0,1,2), KD ahead on: whole_tumor 2/3, ..."``; empty under two shared seeds."""
    common = sorted(set(kd["seed_dice"]) & set(none["seed_dice"]))
    if len(common) < 2:
        return ""
    counts = []
    for s in kd["structures"]:
        pairs = [(kd["seed_dice"][k].get(s), none["seed_dice"][k].get(s)) for k in common]
        ahead = sum(1 for a, b in pairs if a is not None and b is not None and a > b)
        counts.append(f"{s} {ahead}/{len(common)}")
    return f"({','.join(map(str, common))}), KD ahead on: {', '.join(counts)}"


def _paired(kd: dict[str, Any], none: dict[str, Any]) -> str:
    counts = _paired_counts(kd, none)
    return f" Paired by seed {counts}." if counts else ""


FULL_RECIPE = "logit+sard+ca"  # the method the targets are about; the single terms are its ablation


def _by_validation(e: dict[str, Any]) -> tuple[float, float]:
    """Rank of a KD run when choosing one: its validation Dice on whole cases (else the training loop's
    patch Dice, which saturates), then its held-out mean Dice."""
    val = (e.get("val_case_dice") or (None, None))[0]
    if val is None:
        val = e.get("final_val_dice", (None, None))[0]
    return (-math.inf if val is None else val, e["mean_dice"][0])


def _judged(kds: Sequence[dict[str, Any]], none: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """The KD run a target is judged on, and why that one."""
    full = [e for e in kds if e["kd"] == FULL_RECIPE]
    if full:
        return full[0], "the full recipe"
    seeds = set(none["seeds"]) if none else set()
    return (max(kds, key=lambda e: (len(set(e["seeds"]) & seeds), *_by_validation(e))),
            "no full-recipe run: the one sharing most seeds with no KD, then best validation Dice")


def _versus(kd: dict[str, Any], none: dict[str, Any]) -> tuple[list[str], bool, list[str]]:
    """Per region ``"region a vs b"``, whether KD is ahead on all, and the regions where the gap is within a
    seed's spread."""
    per, unclear, wins = [], [], True
    for s in kd["structures"]:
        (a, sa), (b, sb) = kd["dice"][s], none["dice"][s]
        if a is None or b is None:
            wins = False
            per.append(f"{s} n/a")
            continue
        wins &= a > b
        per.append(f"{s} {a:.3f} vs {b:.3f}")
        spreads = [x for x in (sa, sb) if x is not None]
        if spreads and abs(a - b) <= max(spreads):
            unclear.append(s)  # the gap is no larger than one seed's spread
    return per, wins, unclear


def _no_kd(students: Sequence[dict[str, Any]], width: float) -> dict[str, Any] | None:
    """The no-KD entry at this width, if it was run."""
    return next((e for e in students if abs(e["width"] - width) < 1e-9 and e["kd"] == "none"), None)


def targets(entries: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]] = (),
            baseline: dict[str, Any] | None = None) -> list[str]:
    """The targets, each as a measured sentence (met / not met / not measured); with the rows' per-case
    results a KD-vs-no-KD verdict also needs its paired interval to exclude 0; with the voxel baseline,
    the pilot gate's two margins (docs/study.md) close the list."""
    # imported here: distillation.study's package import loads this module, and `python -m` of either
    # module must not find it loaded already
    from distillation.study.analysis import interval_sentence
    from distillation.study.gate import gate_lines

    lines: list[str] = []
    teacher = next((e for e in entries if e["role"] == "teacher"), None)
    students = [e for e in entries if e["role"] == "student" and e.get("label_budget") is None]
    if teacher is None or teacher["mean_dice"][0] is None:
        return ["Targets not evaluated: the teacher has not been evaluated yet."]
    t_dice, t_case = teacher["mean_dice"][0], teacher["latency_case_s"][0]
    quarter_kd = [e for e in students if abs(e["width"] - 0.25) < 1e-9 and e["kd"] != "none"
                  and e["mean_dice"][0] is not None]
    if quarter_kd:
        best, why = _judged(quarter_kd, _no_kd(students, 0.25))
        ratio = best["mean_dice"][0] / t_dice if t_dice else float("nan")
        others = [f"{e['kd']} {_fmt(e['mean_dice'])} ({100 * e['mean_dice'][0] / t_dice:.1f} %)"
                  for e in quarter_kd if e is not best and t_dice]
        lines.append(f"- Width 1/4 with KD keeps ≥ 98.7 % of the teacher's mean Dice ({why}, {best['kd']}): "
                     f"{_fmt(best['mean_dice'])} vs teacher {t_dice:.3f} = {100 * ratio:.1f} % "
                     f"→ **{'met' if ratio >= 0.987 else 'not met'}**."
                     + (f" Other width-1/4 KD runs: {'; '.join(others)}." if others else ""))
    else:
        lines.append("- Width 1/4 with KD vs teacher: not measured (no width-1/4 KD run finished).")
    for width in sorted({e["width"] for e in students}, reverse=True):
        none = _no_kd(students, width)
        kds = [e for e in students if e["width"] == width and e["kd"] != "none" and e["mean_dice"][0] is not None]
        if none is None or not kds:
            lines.append(f"- KD vs no KD at width {_width(width)}: not measured (needs a no-KD run and a KD run).")
            continue
        best, why = _judged(kds, none)
        per, wins, unclear = _versus(best, none)
        seeds = f"means over seeds {','.join(map(str, best['seeds']))} vs {','.join(map(str, none['seeds']))}"
        caveat = (f" The gap on {', '.join(unclear)} is within the seed-to-seed spread (±1 sd): "
                  "more seeds would be needed to call it." if unclear else "")
        also = []  # the other recipes run on the same seeds as no KD (several seeds), for the ablation
        for e in kds:
            if e is not best and len(none["seeds"]) > 1 and set(none["seeds"]) <= set(e["seeds"]):
                o_per, o_wins, _ = _versus(e, none)
                ahead = "ahead on every region" if o_wins else "not ahead on every region"
                counts = _paired_counts(e, none)
                also.append(f"{e['kd']}: {'; '.join(o_per)} ({ahead}{'; paired by seed ' + counts if counts else ''})")
        interval, shown = interval_sentence(rows, best, none)
        verdict = "met" if wins and shown is not False else "not shown" if wins else "not met"
        lines.append(f"- KD beats no KD at width {_width(width)} on each region (KD run = {best['kd']}, {why}; "
                     f"{seeds}): {'; '.join(per)} → **{verdict}**.{caveat}{_paired(best, none)}{interval}"
                     + (f" Over the same seeds, {' — '.join(also)}." if also else ""))
    quarter = [e for e in students if abs(e["width"] - 0.25) < 1e-9 and e["latency_case_s"][0] is not None]
    if quarter and t_case:
        lat = statistics.fmean(e["latency_case_s"][0] for e in quarter)
        cut = 1 - lat / t_case
        lines.append(f"- CPU latency per case at width 1/4 ≥ 67 % below the teacher's: {lat:.2f} s vs {t_case:.2f} s "
                     f"= {100 * cut:.0f} % lower → **{'met' if cut >= 0.67 else 'not met'}**.")
    else:
        lines.append("- CPU latency at width 1/4 vs teacher: not measured.")
    if baseline is not None:
        lines += gate_lines(teacher, _no_kd(students, 0.25), baseline)
    return lines


def _table(entries: Sequence[dict[str, Any]], baseline: dict[str, Any] | None = None) -> list[str]:
    structures = entries[0]["structures"] if entries else []
    head = ["model", "width", "KD", "seeds", "parameters", "GFLOPs/window"]
    head += [f"Dice {s}" for s in structures] + ["mean Dice", "% of teacher"]
    head += [f"HD95 {s} (mm)" for s in structures]
    head += ["latency/window (s)", "latency/case (s)", "vs teacher", "last val Dice", "val Dice (cases)",
             "train (min)"]
    teacher = next((e for e in entries if e["role"] == "teacher"), None)
    t_dice = teacher["mean_dice"][0] if teacher else None
    t_case = teacher["latency_case_s"][0] if teacher else None
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        train = e["train_seconds"]
        kd = e["kd"] + (f" ({e['label_budget']} labelled cases)" if e.get("label_budget") is not None else "")
        cells = [e["role"], _width(e["width"]), kd, ",".join(str(s) for s in e["seeds"]),
                 f"{e['parameters']:,}", f"{e['gflops_per_window']:.2f}"]
        dice, case = e["mean_dice"][0], e["latency_case_s"][0]
        cells += [_fmt(e["dice"][s]) for s in structures] + [_fmt(e["mean_dice"])]
        cells += [f"{100 * dice / t_dice:.1f} %" if dice is not None and t_dice else "n/a"]
        cells += [_fmt(e["hd95"][s], 1) for s in structures]
        cells += [_fmt(e["latency_window_s"], 3), _fmt(e["latency_case_s"], 2)]
        cells += [f"{100 * (case / t_case - 1):+.0f} %" if case is not None and t_case else "n/a"]
        cells += [_fmt(e["final_val_dice"]), _fmt(e["val_case_dice"]),
                  _fmt((train[0] / 60 if train[0] is not None else None,
                        train[1] / 60 if train[1] is not None else None), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    if baseline is not None:
        from distillation.study.baseline_row import baseline_dice

        dice, mean = baseline_dice(baseline, list(structures))
        cells = ["voxel baseline (no network)", "-", "-", str(baseline["params"]["seed"]), "0", "-"]
        cells += [_fmt((dice[s], None)) for s in structures] + [_fmt((mean, None))]
        cells += [f"{100 * mean / t_dice:.1f} %" if mean is not None and t_dice else "n/a"]
        cells += ["-"] * (len(head) - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _plots(config: StudyConfig, entries: Sequence[dict[str, Any]], docs: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = config.report.stem
    markers = {"none": "o", "logit": "s", "sard": "^", "ca": "v", "logit+sard+ca": "*", "-": "D"}
    paths = []
    for xfield, xlabel, suffix, log_x in (("parameters", "parameters", "dice-params", True),
                                          ("latency_case_s", "CPU latency per case (s, ONNX Runtime)",
                                           "dice-latency", False)):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for e in entries:
            x = e[xfield] if xfield == "parameters" else e[xfield][0]
            y, err = e["mean_dice"]
            if x is None or y is None:
                continue
            label = "teacher" if e["role"] == "teacher" else f"w {_width(e['width'])} {e['kd']}"
            ax.errorbar(x, y, yerr=err or 0, marker=markers.get(e["kd"], "o"), markersize=8, capsize=3,
                        linestyle="none", label=label)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean Dice over regions (held-out)")
        ax.set_title(textwrap.fill(f"{config.report.title}:", 80) + f"\nDice vs {xlabel.split(' (')[0]}",
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        paths.append(_save(fig, docs / f"{stem}-{suffix}.png"))
        plt.close(fig)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for e in entries:
        label = "teacher" if e["role"] == "teacher" else f"w {_width(e['width'])} {e['kd']}"
        for seed, curve in e["curves"]:
            suffix = f" s{seed}" if len(e["curves"]) > 1 else ""
            ep = [c["epoch"] + 1 for c in curve if c.get("train_total") is not None]
            ax1.plot(ep, [c["train_total"] for c in curve if c.get("train_total") is not None], marker=".",
                     label=label + suffix)
            val = [(c["epoch"] + 1, c["val_dice"]) for c in curve if c.get("val_dice") is not None]
            if val:
                ax2.plot([v[0] for v in val], [v[1] for v in val], marker=".", label=label + suffix)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (CE - soft Dice + KD terms)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation pseudo-Dice (patches)")
    ax2.set_ylim(0, 1)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    ax2.legend(fontsize=7, ncol=2)
    fig.suptitle(textwrap.fill(f"{config.report.title}: training curves", 110))
    fig.tight_layout()
    paths.append(_save(fig, docs / f"{stem}-curves.png"))
    plt.close(fig)
    return paths


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path


def write_report(config: StudyConfig, rows: Sequence[dict[str, Any]], pending: Sequence[str], docs: Path,
                 work: Path) -> tuple[Path, list[Path]]:
    """Write ``docs/<stem>.md`` (with ``docs/<stem>-notes.md`` appended if present) and the plots."""
    docs.mkdir(parents=True, exist_ok=True)
    entries = summarise(rows)
    baseline = load_baseline(work)
    plots = _plots(config, entries, docs) if entries else []
    d, t, ev = config.dataset, config.training, config.evaluation
    lines = [f"# {config.report.title}", "", config.description.strip(), "",
             "Regenerate (resumable: finished runs are skipped):", "", "```",
             f"distill study {config.name} --work WORK --docs {docs}", "```", "",
             f"- Dataset: {d.cases} training + {d.test_cases} held-out synthetic {d.kind} phantoms "
             f"(`distill phantoms {d.kind}`, seed {d.seed}, spacing {d.spacing or 'default'} mm"
             + (f", whole-tumor radius {d.tumor_radius_mm.replace(',', '-')} mm" if d.tumor_radius_mm else "") + ").",
             f"- Training preset `{t.preset}`; teacher epochs {t.teacher_epochs or 'preset'}, student epochs "
             f"{t.student_epochs or 'preset'}, batches/epoch {t.batches_per_epoch or 'preset'}.",
             f"- Evaluation on the held-out cases through `pacsnode.inference` (ONNX Runtime, {ev.threads} "
             f"threads, the node's sliding window): Dice and HD95 per region, means over cases "
             f"(HD95 over cases where both masks are non-empty). Latency: median of {ev.latency_windows} "
             f"single windows and of {ev.latency_cases} whole cases, same runtime and threads for every model.",
             "- GFLOPs: one forward pass of one window (patch size from the card), 2 × MACs.",
             "- Post-processing: chosen per run on its own validation cases "
             + ("(nnU-Net's rule: keep a label's largest connected component where that raises the label's "
                "validation Dice) and carried in the scored model's card; the labels it applies to are listed "
                "per run under the table." if ev.choose_postprocessing else "— switched off."),
             "- Validation: *last val Dice* is the training loop's Dice on validation patches; *val Dice (cases)* "
             "the mean over labels of the Dice on the run's own validation cases, whole cases through the node "
             "with its post-processing (never the held-out cases: what a model may be chosen on).", ""]
    if entries:
        lines += ["## Results", ""] + _table(entries, baseline) + [""]
        if baseline is not None:
            lines += [f"The voxel baseline: `distill baseline` (gradient boosting on voxel features, no network; "
                      f"docs/benchmark.md), fitted on the {baseline['train_cases']} training cases and scored on the "
                      f"same {baseline['test_cases']} held-out cases as every network here.", ""]
        lcc = [f"{r['run']}: {', '.join(map(str, r['largest_component'])) or 'none'}" for r in rows
               if "largest_component" in r]
        if lcc:
            lines += ["Largest-component post-processing (label values): " + "; ".join(lcc) + ".", ""]
        imported = [r for r in rows if r.get("imported_from")]
        if imported:
            files = ", ".join(f"`{f}`" for f in sorted({r["imported_from"] for r in imported}))
            retrained = all(r["role"] != "teacher" for r in imported)
            lines += [f"Taken as measured from an earlier run of this study ({files}): "
                      + ", ".join(f"`{r['run']}`" for r in imported) + "."
                      + (" The teacher was trained again here and scored as that run's teacher did, so the KD "
                         "runs trained here distil from the same teacher." if retrained else ""), ""]
        loads = [r.get("load_average_1min") for r in rows if r.get("load_average_1min") is not None]
        if loads:
            lines += [f"Load average (1 min) while timing: {min(loads):.1f}–{max(loads):.1f} on "
                      f"{os.cpu_count()} CPUs (shared machine: latencies are indicative).", ""]
        lines += ["## Targets, as measured", ""] + targets(entries, rows, baseline) + [""]
        failures = failure_lines(rows)
        if failures:
            lines += ["## Failed cases", ""] + failures
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    else:
        lines += ["No run has finished yet.", ""]
    notes = docs / f"{config.report.stem}-notes.md"
    if notes.is_file():
        lines += ["## Notes", "", notes.read_text(encoding="utf-8").strip(), ""]
    if pending:
        lines += ["## Not finished", "", "These runs were planned but had not finished when this report was written: "
                  + ", ".join(f"`{p}`" for p in pending) + ".", ""]
    path = docs / f"{config.report.stem}.md"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path, plots
