"""``distill study``: dataset → teacher → students → export → evaluation → table and plots.

Everything lands in a work folder, one sub-folder per run, and each step leaves a file that marks
it finished, so running the same command again skips what is done and resumes what is not
(training resumes from ``checkpoint_latest.pt``)::

    WORK/data/DatasetXXX_Name/          phantoms (dataset.json written last = finished)
    WORK/teacher/                       checkpoint_final.pt, postprocessing.json, model.onnx,
                                        evaluation.json, latency.json, result.json
    WORK/students/w0.25-logit-s0/       the same per student
    WORK/results.json                   every finished row, then DOCS/<stem>.md and the plots
    DOCS/<stem>-results.json            the same rows beside the report, to keep with it

The rows beside the report outlive the work folder: ``--results DOCS/<stem>-results.json`` starts a
new work folder from them, so that runs added to the preset train while the finished ones are
reported as they were measured. KD runs need the teacher's weights, so the teacher is trained again
(same seed, same data) and scored, and the rows are taken only if it scores as the file's teacher
did: a different teacher would make the new KD runs incomparable with the old ones. With
``--report-only`` nothing is trained and the report is written from the file's rows (and WORK's).

Two processes (or machines) can share WORK: ``--runs`` names the student runs a call may train, and
``--no-measure`` trains without exporting or scoring, so that latency is timed later, by one call,
on an idle machine. A student without KD takes only the teacher's architecture and plan, never its
weights, so a call whose ``--runs`` are all no-KD runs does not wait for the teacher: while the
teacher is still training (in another process) it starts from a copy of the teacher's latest
checkpoint, ``WORK/teacher/checkpoint_plan.pt``, which its card names as the teacher.

Before a run is scored its post-processing is chosen on its own validation cases (nnU-Net's
rule: keep a label's largest connected component where that raises the label's validation Dice,
:mod:`distillation.evaluate.postprocessing`) and written into the exported model's card, so the
held-out figures are those of the model as the node would run it.

A row (``result.json``) holds what was measured: role, width, KD recipe, seed, parameters,
GFLOPs per window, Dice / HD95 mean per region on the held-out cases (through the node's
inference), the mean Dice over regions, CPU latency per window and per case, the last validation
Dice and the training time; and, per held-out case, Dice and HD95 per region (``case_dice``,
``case_hd95``) and lesion detection counts (``case_lesions``, with the pooled ``lesion_f1`` and
``small_lesion_f1``), so that the study's analysis (:mod:`distillation.study.analysis`) can resample
seeds and cases from the results file alone. Students all distil from the one teacher; their seeds
vary the student's initialisation and patch sampling, the teacher is trained once (first seed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distillation.study.baseline_row import ensure_baseline, load_baseline
from distillation.study.config import KD_RECIPES, RunKey, StudyConfig
from distillation.study.files import FINAL, LATEST, PLAN, RESULT, atomic_json
from distillation.study.score import measure_run
from pacsnode.errors import ConfigError

__all__ = ["StudyResult", "run_study", "dataset_dir", "collect_rows", "make_preset", "results_path"]

log = logging.getLogger(__name__)

TEACHER_MATCH = 1e-3  # a retrained teacher is the file's when each region's mean Dice and its val Dice agree this well

_PHANTOM_DATASETS = {"brain": (501, "BrainTumorPhantom"), "ct": (502, "AbdomenCTPhantom")}


@dataclass(frozen=True)
class StudyResult:
    rows: list[dict[str, Any]]
    pending: list[str]
    results_json: Path
    markdown: Path
    plots: list[Path]


def results_path(config: StudyConfig, docs: Path) -> Path:
    """``DOCS/<stem>-results.json``: the report's rows, kept beside it."""
    return docs / f"{config.report.stem}-results.json"


def dataset_dir(config: StudyConfig, work: Path) -> Path:
    dataset_id, name = _PHANTOM_DATASETS[config.dataset.kind]
    return work / "data" / f"Dataset{dataset_id:03d}_{name}"


def _ensure_dataset(config: StudyConfig, work: Path) -> Path:
    folder = dataset_dir(config, work)
    if (folder / "dataset.json").is_file():
        log.info("study: dataset %s is there, skipping generation", folder)
        return folder
    from distillation.cli.phantoms import run as phantoms

    d = config.dataset
    log.info("study: generating %d + %d %s phantoms in %s", d.cases, d.test_cases, d.kind, folder)
    dataset_id, name = _PHANTOM_DATASETS[d.kind]  # where dataset_dir looks, whatever the setting
    phantoms(argparse.Namespace(kind=d.kind, cases=d.cases, test_cases=d.test_cases, out=work / "data", seed=d.seed,
                                spacing=d.spacing or None, tumor_radius=d.tumor_radius_mm or None,
                                setting=d.setting, dataset_id=dataset_id, name=name, dicom=False,
                                orientation=None, flip_slices=False, enhanced=False, compress=None))
    return folder


def make_preset(config: StudyConfig, role: str, seed: int = 0, kd: str = "none"):
    """The training preset of one run: the study's preset with its overrides and the run's KD terms."""
    from distillation.config import load_preset, with_kd_terms

    t = config.training
    preset = load_preset(t.preset)
    epochs = t.teacher_epochs if role == "teacher" else t.student_epochs
    train = replace(preset.train, seed=seed, progress=False, **({"epochs": epochs} if epochs else {}))
    data = preset.data
    if t.batches_per_epoch:
        data = replace(data, batches_per_epoch=t.batches_per_epoch)
    if t.num_workers >= 0:
        data = replace(data, num_workers=t.num_workers)
    preset = replace(preset, train=train, data=data)
    return with_kd_terms(preset, KD_RECIPES[kd]) if role == "student" else preset


def _train(kind: str, out: Path, fn: Any) -> float:
    """Run ``fn(resume)`` unless ``out`` holds a final checkpoint; returns seconds spent (0 if skipped)."""
    if (out / FINAL).is_file():
        log.info("study: %s finished earlier (%s), skipping training", kind, out / FINAL)
        return 0.0
    resume = (out / LATEST).is_file()
    log.info("study: training %s in %s%s", kind, out, " (resuming)" if resume else "")
    t0 = time.perf_counter()
    fn(resume)
    return time.perf_counter() - t0


def collect_rows(work: Path) -> list[dict[str, Any]]:
    """Every finished row under WORK (teacher first, then students by name)."""
    rows = []
    teacher = work / "teacher" / RESULT
    if teacher.is_file():
        rows.append(json.loads(teacher.read_text(encoding="utf-8")))
    for path in sorted((work / "students").glob(f"*/{RESULT}")):
        rows.append(json.loads(path.read_text(encoding="utf-8")))
    return rows


def run_study(config: StudyConfig, work: str | Path, docs: str | Path, *, teacher: str | Path | None = None,
              report_only: bool = False, max_students: int | None = None,
              only: Sequence[str] = (), measure: bool = True, results: str | Path | None = None) -> StudyResult:
    """Run (or resume) the whole study and write the report; see the module docstring.

    ``teacher`` reuses an existing teacher checkpoint (same dataset and plan) instead of training
    one; ``report_only`` trains nothing and reports what is finished; ``max_students`` stops after
    that many student runs have been trained in this call (the rest are listed as pending);
    ``only`` names the student runs this call may train (e.g. one per process or machine sharing
    WORK), the others are left as they are; ``measure=False`` trains without exporting, scoring or
    timing anything (a later call measures what has finished); ``results`` takes the finished student
    rows of an earlier run of this study from its ``DOCS/<stem>-results.json`` (see the module docstring).
    """
    from distillation.train import train_teacher

    known = {k.name for k in config.student_runs()}
    unknown = [n for n in only if n not in known]
    if unknown:  # before any work, not after the teacher's hour
        raise ConfigError(f"--runs must name runs of {config.name} ({', '.join(sorted(known))}), "
                          f"got {', '.join(unknown)}")
    work, docs = Path(work), Path(docs)
    work.mkdir(parents=True, exist_ok=True)
    atomic_json(work / "study.json", config.to_json())
    earlier = _read_results(config, Path(results)) if results is not None else None
    pending: list[str] = []
    dataset = dataset_dir(config, work)
    if not report_only:
        teacher_dir = work / "teacher"
        plan_only = (teacher is None and bool(only) and not (teacher_dir / FINAL).is_file()
                     and all(k.kd == "none" for k in config.student_runs() if k.name in only))
        if plan_only:  # another process trains the teacher; these students need only its plan
            return _train_from_plan(config, work, docs, only, measure)
        dataset = _ensure_dataset(config, work)
        teacher_dir.mkdir(exist_ok=True)
        teacher_ckpt = Path(teacher) if teacher else teacher_dir / FINAL
        if teacher is None:
            seed = config.students.seeds[0]
            _train("teacher", teacher_dir,
                   lambda resume: train_teacher(make_preset(config, "teacher", seed), dataset, teacher_dir,
                                                resume=resume))
        elif not (teacher_dir / FINAL).exists():
            (teacher_dir / FINAL).symlink_to(teacher_ckpt.resolve())
            src_metrics = teacher_ckpt.parent / "metrics.json"
            if src_metrics.is_file() and not (teacher_dir / "metrics.json").exists():
                (teacher_dir / "metrics.json").symlink_to(src_metrics.resolve())
        if (measure or earlier is not None) and not (teacher_dir / RESULT).is_file():
            measure_run(config, teacher_dir, dataset, {"run": "teacher", "role": "teacher", "width": 1.0,
                                                    "kd": "-", "seed": config.students.seeds[0],
                                                    "teacher_checkpoint": str(teacher_ckpt)})
        if measure:
            ensure_baseline(work, dataset)
        if earlier is not None:
            _check_same_teacher(json.loads((teacher_dir / RESULT).read_text(encoding="utf-8")), earlier["teacher"],
                                Path(results))
            _keep_rows(config, work, earlier)
        trained = 0
        for key in config.student_runs():
            out = work / "students" / key.name
            if (out / RESULT).is_file():
                continue
            if only and key.name not in only:
                pending.append(key.name)
                continue
            if max_students is not None and trained >= max_students and not (out / FINAL).is_file():
                pending.append(key.name)
                continue
            trained += _train_student(config, key, out, teacher_dir / FINAL, dataset) > 0
            if not measure:
                pending.append(key.name)
                continue
            measure_run(config, out, dataset, _student_row(key))
            _report(config, work, docs, _not_done(config, work))  # an interrupted study still has a report
        return _report(config, work, docs, pending)
    return _report(config, work, docs, _not_done(config, work, earlier), earlier)


def _train_student(config: StudyConfig, key: RunKey, out: Path, teacher: Path, dataset: Path) -> float:
    from distillation.train import LabelBudget, distill

    out.mkdir(parents=True, exist_ok=True)
    # a label budget: the first key.labels training cases labelled; KD learns from the rest as unlabelled
    budget = None if key.labels is None else LabelBudget(dataset if key.kd != "none" else None, key.labels)
    return _train(f"student {key.name}", out, lambda resume: distill(
        make_preset(config, "student", key.seed, key.kd), teacher, key.width, dataset, out, resume=resume,
        budget=budget))


def _teacher_plan(work: Path) -> Path:
    """``teacher/checkpoint_plan.pt``: a stable copy of the training teacher's latest checkpoint."""
    plan, latest = work / "teacher" / PLAN, work / "teacher" / LATEST
    if not plan.is_file():
        if not latest.is_file():
            raise ConfigError(f"--runs names only runs without KD, which take the teacher's plan, but {work / 'teacher'} "
                              f"holds no checkpoint yet: start the teacher first (distill study CONFIG --work {work}), "
                              "then run this call once its first checkpoint is written")
        tmp = plan.with_name(f"{PLAN}.{os.getpid()}.tmp")
        shutil.copyfile(latest, tmp)  # the teacher's process replaces LATEST atomically; this copy stays put
        os.replace(tmp, plan)
    return plan


def _train_from_plan(config: StudyConfig, work: Path, docs: Path, only: Sequence[str],
                     measure: bool) -> StudyResult:
    """Train the named no-KD runs from the teacher's plan while another process trains the teacher."""
    plan = _teacher_plan(work)
    dataset = dataset_dir(config, work)
    log.info("study: the teacher has not finished; no-KD runs start from its plan (%s)", plan)
    for key in config.student_runs():
        out = work / "students" / key.name
        if key.name in only and not (out / RESULT).is_file():
            _train_student(config, key, out, plan, dataset)
            if measure:
                measure_run(config, out, dataset, _student_row(key))
    return _report(config, work, docs, _not_done(config, work))


def _read_results(config: StudyConfig, results: Path) -> dict[str, dict[str, Any]]:
    """The rows of ``results`` (an earlier run of this study), by run name, marked with where they came from."""
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
        study, rows = data["study"], {r["run"]: {**r, "imported_from": str(results)} for r in data["rows"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--results must be a study's results file (DOCS/<stem>-results.json), "
                          f"got {str(results)!r}: {exc}") from None
    ours = json.loads(json.dumps(config.to_json()))
    for section in ("name", "dataset", "training", "evaluation"):
        if study.get(section) != ours[section]:
            raise ConfigError(f"--results must come from a run of {config.name} with the same {section}, "
                              f"got {study.get(section)!r} in {results}, the preset has {ours[section]!r}")
    if "teacher" not in rows:
        raise ConfigError(f"--results must hold the teacher's row (its KD runs are checked against it), "
                          f"got none in {results}")
    return rows


def _keep_rows(config: StudyConfig, work: Path, earlier: dict[str, dict[str, Any]]) -> None:
    """Write the earlier student rows into WORK where WORK has not started that run itself."""
    for key in config.student_runs():
        row, out = earlier.get(key.name), work / "students" / key.name
        if row is not None and not (out / RESULT).is_file() and not (out / LATEST).is_file():
            out.mkdir(parents=True, exist_ok=True)
            atomic_json(out / RESULT, row)


def _check_same_teacher(ours: dict[str, Any], earlier: dict[str, Any], results: Path) -> None:
    scores = [(f"{s} Dice", ours["dice"].get(s), earlier["dice"].get(s)) for s in earlier["structures"]]
    scores.append(("validation Dice", ours.get("final_val_dice"), earlier.get("final_val_dice")))
    off = [f"{what} {a} vs {b}" for what, a, b in scores
           if (a is None) != (b is None) or (a is not None and abs(a - b) > TEACHER_MATCH)]
    if off:
        env_here, env_there = ours.get("environment") or {}, earlier.get("environment") or {}
        differ = [f"{k} {env_here.get(k)} vs {env_there.get(k)}" for k in sorted(set(env_here) | set(env_there))
                  if env_here.get(k) != env_there.get(k)]
        raise ConfigError(f"--results needs the teacher trained here to be the one of {results}, got "
                          f"{'; '.join(off)} (here vs there): KD runs from this teacher would not compare with "
                          f"its rows; run without --results to redo the whole study"
                          + (f" (the environments differ: {'; '.join(differ)})" if differ else ""))
    log.info("study: the teacher trained here scores as the one of %s; its rows are kept", results)


def _not_done(config: StudyConfig, work: Path, earlier: dict[str, dict[str, Any]] | None = None) -> list[str]:
    done = {r["run"] for r in collect_rows(work)} | set(earlier or {})
    return [k.name for k in config.student_runs() if k.name not in done]


def _report(config: StudyConfig, work: Path, docs: Path, pending: list[str],
            earlier: dict[str, dict[str, Any]] | None = None) -> StudyResult:
    """Write the results files and the report of this preset's runs (a WORK shared with another preset of
    the same study may hold others); ``earlier`` rows (a report only from ``--results``) fill in the runs
    WORK lacks, teacher first, then students by name, as :func:`collect_rows` orders them."""
    from distillation.study.report import write_report

    known = {"teacher"} | {k.name for k in config.student_runs()}
    rows = [r for r in collect_rows(work) if r["run"] in known]
    if earlier:
        names = {r["run"] for r in rows}
        rows = sorted(rows + [r for n, r in earlier.items() if n in known and n not in names],
                      key=lambda r: (r["role"] != "teacher", r["run"]))
    payload = {"study": config.to_json(), "rows": rows, "pending": pending, "baseline": load_baseline(work)}
    atomic_json(work / "results.json", payload)
    docs.mkdir(parents=True, exist_ok=True)
    atomic_json(results_path(config, docs), payload)
    markdown, plots = write_report(config, rows, pending, docs, work)
    return StudyResult(rows=rows, pending=pending, results_json=work / "results.json", markdown=markdown,
                       plots=plots)


def _student_row(key: RunKey) -> dict[str, Any]:
    row = {"run": key.name, "role": "student", "width": key.width, "kd": key.kd, "seed": key.seed}
    return row if key.labels is None else {**row, "label_budget": key.labels}
