"""Scoring one trained run of a study, always through what the node deploys: the post-processing
chosen on its own validation cases, the ONNX export with its card, Dice / HD95 / lesion detection on
the held-out cases, CPU latency, and the row (``result.json``) that holds them (see
:mod:`distillation.study.runner`).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from distillation.study.config import StudyConfig
from distillation.study.files import FINAL, RESULT, atomic_json

__all__ = ["measure_run", "validation_case_dice", "environment", "STUDY_INTENDED_USE"]

STUDY_INTENDED_USE = ("Research only: a distillation-study model trained on synthetic phantoms. "
                      "Not for clinical use.")


def _training_summary(out: Path) -> dict[str, Any]:
    path = out / "metrics.json"
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text(encoding="utf-8"))
    epochs = metrics.get("epochs", [])
    val = [r for r in epochs if "val_dice" in r]
    return {"epochs": len(epochs), "train_seconds": sum(float(r.get("epoch_seconds", 0.0)) for r in epochs),
            "final_val_dice": val[-1]["val_dice"] if val else None,
            "curve": [{"epoch": r["epoch"], "train_total": r.get("train_total"), "val_dice": r.get("val_dice")}
                      for r in epochs]}


def _export(checkpoint: Path, onnx_path: Path, name: str, provenance: dict[str, Any],
            largest_component: list[int] | None = None) -> None:
    from distillation.checkpoint import load_checkpoint
    from distillation.evaluate.postprocessing import card_with_postprocessing
    from distillation.export import export_onnx

    ck = load_checkpoint(checkpoint)
    card = card_with_postprocessing(ck.card, largest_component or [])
    card["name"] = name
    card["intended_use"] = STUDY_INTENDED_USE
    card["provenance"] = {**dict(card.get("provenance") or {}), **provenance}
    export_onnx(ck.build_network(deep_supervision=False), card, onnx_path)


def _postprocessing(config: StudyConfig, run_dir: Path, dataset: Path, name: str,
                    provenance: dict[str, Any]) -> dict[str, Any]:
    """The run's post-processing, chosen once on its own validation cases (``postprocessing.json``)."""
    from distillation.checkpoint import load_checkpoint
    from distillation.evaluate.postprocessing import decide_postprocessing

    path = run_dir / "postprocessing.json"
    if not path.is_file():
        val = list((load_checkpoint(run_dir / FINAL).extra.get("split") or {}).get("val") or [])
        if config.evaluation.choose_postprocessing and val:
            bare = run_dir / "model-no-postprocessing.onnx"
            _export(run_dir / FINAL, bare, name, provenance)
            decision = decide_postprocessing(bare, dataset, val, threads=config.evaluation.threads)
            bare.unlink()
        else:
            decision = {"largest_component": [], "cases": val,
                        "rule": "none (switched off)" if val else "none (the run has no validation cases)"}
        for stale in ("model.onnx", "evaluation.json", "latency.json", RESULT):  # made before the decision
            (run_dir / stale).unlink(missing_ok=True)
        atomic_json(path, decision)
    return json.loads(path.read_text(encoding="utf-8"))


def validation_case_dice(post: dict[str, Any]) -> float | None:
    """The run's mean Dice over labels on its own validation cases (whole cases through the node's
    inference, with the post-processing chosen on them), from its ``postprocessing.json``; a selector
    that never looks at the held-out cases (``None`` without validation cases)."""
    per_label = post.get("dice") or {}
    kept = {int(v) for v in post.get("largest_component") or []}
    values = [after if int(label) in kept else before for label, (before, after) in per_label.items()]
    return sum(values) / len(values) if values else None


def environment() -> dict[str, str]:
    """What a run's numbers depend on beyond its preset: the libraries and the CPU. Training is
    bit-for-bit repeatable where these are the same (same seed, same data); elsewhere it is not."""
    from importlib.metadata import PackageNotFoundError, version

    env = {"python": platform.python_version(), "cpu": _cpu()}
    for package in ("torch", "numpy", "scipy", "monai", "nilearn", "onnxruntime"):
        try:
            env[package] = version(package)
        except PackageNotFoundError:
            env[package] = "not installed"
    return env


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or platform.machine()
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in info.splitlines() if ":" in line)}
    name = fields.get("model name", platform.machine())
    flags = fields.get("flags", "").split()
    simd = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), "")
    return f"{name} ({simd}, {os.cpu_count()} CPUs)" if simd else f"{name} ({os.cpu_count()} CPUs)"


def measure_run(config: StudyConfig, run_dir: Path, dataset: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Export, evaluate and time one trained run; writes and returns its ``result.json`` row."""
    from distillation.evaluate import evaluate_model
    from distillation.study.measure import latency, network_cost

    ckpt = run_dir / FINAL
    cost = network_cost(ckpt)
    onnx_path = run_dir / "model.onnx"
    name = f"{config.name}-{row['run']}"
    provenance = {"width_factor": row["width"], "kd_method": row["kd"], "parameters": cost["parameters"],
                  "dataset": dataset.name}
    post = _postprocessing(config, run_dir, dataset, name, provenance)
    if not onnx_path.is_file():
        _export(ckpt, onnx_path, name, provenance, post["largest_component"])
    ev = config.evaluation
    eval_path = run_dir / "evaluation.json"
    if not eval_path.is_file():
        evaluate_model(onnx_path, dataset, "Ts", threads=ev.threads, limit=ev.limit or None,
                       progress=False).write(eval_path)
    evaluation = json.loads(eval_path.read_text(encoding="utf-8"))
    lat_path = run_dir / "latency.json"
    if not lat_path.is_file():
        atomic_json(lat_path, latency(onnx_path, dataset, threads=ev.threads, cases=ev.latency_cases,
                                       windows=ev.latency_windows))
    lat = json.loads(lat_path.read_text(encoding="utf-8"))
    summary = evaluation["summary"]
    structures = list(evaluation["settings"].get("regions") or {}) or list(summary)
    dice = {s: summary[s]["dice"]["mean"] for s in structures}
    hd95 = {s: summary[s]["hd95"]["mean"] for s in structures}
    hd95_inf = {s: summary[s]["hd95"].get("n_inf", 0) for s in structures}
    finite = [v for v in dice.values() if v is not None]
    row = {**row, **cost, "structures": structures, "dice": dice, "hd95": hd95, "hd95_n_inf": hd95_inf,
           "mean_dice": sum(finite) / len(finite) if finite else None, "cases": len(evaluation["cases"]),
           "latency_window_s": lat["window_seconds"], "latency_case_s": lat["case_seconds"],
           "latency_case_network_s": lat["case_network_seconds"], "windows_per_case": lat["windows_per_case"],
           "threads": lat["threads"], "load_average_1min": lat["load_average_1min"],
           "largest_component": post["largest_component"], "val_case_dice": validation_case_dice(post),
           "case_dice": {case: {s: m[s].get("dice") for s in structures if s in m}
                         for case, m in sorted(evaluation["cases"].items())},
           "case_hd95": {case: {s: m[s].get("hd95") for s in structures if s in m}
                         for case, m in sorted(evaluation["cases"].items())},
           **_lesion_fields(evaluation),
           **_training_summary(run_dir), "model": str(onnx_path), "environment": environment()}
    atomic_json(run_dir / RESULT, row)
    return row


def _lesion_fields(evaluation: dict[str, Any]) -> dict[str, Any]:
    """Lesion-wise detection of a row (pooled F1 over all and over small lesions, the per-case counts,
    the rule); nothing for a model without lesion labels or an evaluation written before it was measured."""
    lesions = evaluation.get("lesions") or {}
    if not lesions:
        return {}
    return {"lesion_f1": lesions["summary"]["all"]["f1"], "small_lesion_f1": lesions["summary"]["small"]["f1"],
            "lesion_settings": lesions["settings"],
            "case_lesions": {case: {k: d[k] for k in ("all", "small")} for case, d in lesions["cases"].items()}}
