"""Evaluate a deployed model: run the exported ONNX through the node's inference on an nnU-Net
dataset split and score it per label and per region (the numbers are the deployed model's), and, for
a model that segments lesions, lesion-wise detection (:mod:`distillation.evaluate.lesions`)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distillation.evaluate.dataset import EvalCase, iter_cases
from distillation.evaluate.lesions import (
    SMALL_LESION_ML,
    lesion_detection,
    lesion_summary,
    lesion_values,
)
from distillation.evaluate.metrics import aggregate, brats_regions_for, case_metrics

if TYPE_CHECKING:
    from pacsnode.inference import Model

__all__ = ["Evaluation", "evaluate_model", "evaluate_predictions", "evaluate_lesions", "predict_cases"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    model: str
    dataset: str
    split: str
    cases: dict[str, dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    seconds_per_case: float
    settings: dict[str, Any] = field(default_factory=dict)
    lesions: dict[str, Any] = field(default_factory=dict)  # lesion_summary(); {} for a model without lesions

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "split": self.split, "settings": self.settings,
                "summary": self.summary, "seconds_per_case": self.seconds_per_case, "cases": self.cases,
                "lesions": self.lesions}

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        os.replace(tmp, path)
        return path


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and math.isinf(o):
        return "inf"
    raise TypeError(type(o).__name__)


def evaluate_predictions(predictions: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray],
                         spacings: Mapping[str, Sequence[float]], labels: Mapping[str, int],
                         regions: Mapping[str, Sequence[int]] | None = None,
                         nsd_tolerance_mm: float = 1.0) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per-case metric dicts and the aggregate for label maps already in memory."""
    per_case = {ident: case_metrics(predictions[ident], references[ident], spacings[ident], labels, regions,
                                    nsd_tolerance_mm) for ident in predictions}
    cases = {ident: {k: v.to_dict() for k, v in m.items()} for ident, m in per_case.items()}
    return cases, aggregate(list(per_case.values()))


def evaluate_lesions(predictions: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray],
                     spacings: Mapping[str, Sequence[float]], values: Sequence[int],
                     small_ml: float = SMALL_LESION_ML) -> dict[str, Any]:
    """Lesion-wise detection of label maps in memory (lesion = the label ``values``), as
    :func:`~distillation.evaluate.lesions.lesion_summary` writes it; ``{}`` without lesion labels."""
    if not values:
        return {}
    cases = {ident: lesion_detection(np.isin(predictions[ident], values), np.isin(references[ident], values),
                                     spacings[ident], small_ml) for ident in predictions}
    return lesion_summary(cases, values, small_ml)


def predict_cases(model: Model, dataset: str | os.PathLike, split: str = "Ts", *, limit: int | None = None,
                  identifiers: Sequence[str] | None = None,
                  progress: bool = True) -> Iterator[tuple[EvalCase, np.ndarray, np.ndarray, tuple[float, ...]]]:
    """``(case, predicted labels, reference labels, spacing)`` for the labelled cases of
    ``dataset/images{split}`` (only ``identifiers``, if given; the first ``limit``), each predicted by
    a loaded ``pacsnode.inference.Model`` as the node runs it."""
    from tqdm import tqdm

    from pacsnode.inference import run

    modalities = tuple(c["modality"] for c in model.card.to_dict()["inputs"])
    cases = [c for c in iter_cases(dataset, split) if c.label is not None]
    if identifiers is not None:
        wanted = set(identifiers)
        cases = [c for c in cases if c.identifier in wanted]
        missing = wanted - {c.identifier for c in cases}
        if missing:
            raise FileNotFoundError(f"labelled cases {', '.join(sorted(missing))} must be in {dataset}/images{split}")
    if limit is not None:
        cases = cases[:limit]
    if not cases:
        raise FileNotFoundError(f"evaluation needs labelled cases in {dataset}/labels{split}, found none")
    for case in tqdm(cases, desc=f"predict {split}", unit="case", disable=not progress):
        volumes = case.load_volumes(modalities)
        yield case, run(model, volumes).labels, case.load_label(), volumes[0].spacing


def evaluate_model(model_path: str | os.PathLike, dataset: str | os.PathLike, split: str = "Ts", *,
                   threads: int = 2, nsd_tolerance_mm: float = 1.0, limit: int | None = None,
                   progress: bool = True, regions: Mapping[str, Sequence[int]] | None = None,
                   save_predictions: str | os.PathLike | None = None) -> Evaluation:
    """Run ``model_path`` with ``pacsnode.inference`` on every case of ``dataset/images{split}`` and score
    it against ``labels{split}``. Regions default to the BraTS regions for a brain-tumor card."""
    from pacsnode.inference import Model

    model = Model.load(model_path, threads=threads)
    card = model.card.to_dict()
    labels = {lab["name"]: int(lab["value"]) for lab in card["labels"]}
    if regions is None:
        regions = brats_regions_for(card["labels"])
    preds, refs, spacings = {}, {}, {}
    start = time.perf_counter()
    for case, pred, ref, spacing in predict_cases(model, dataset, split, limit=limit, progress=progress):
        preds[case.identifier], refs[case.identifier], spacings[case.identifier] = pred, ref, spacing
        if save_predictions is not None:
            out = Path(save_predictions)
            out.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(out / f"{case.identifier}.npz", labels=pred)
    seconds = (time.perf_counter() - start) / len(preds)
    per_case, summary = evaluate_predictions(preds, refs, spacings, labels, regions, nsd_tolerance_mm)
    lesions = evaluate_lesions(preds, refs, spacings, lesion_values(labels, regions))
    log.info("evaluated %s on %d cases of %s (%.1f s/case)", Path(model_path).name, len(preds), dataset, seconds)
    return Evaluation(model=str(model_path), dataset=str(dataset), split=split, cases=per_case, summary=summary,
                      seconds_per_case=seconds, lesions=lesions,
                      settings={"nsd_tolerance_mm": nsd_tolerance_mm, "threads": threads,
                                "regions": {k: list(v) for k, v in regions.items()},
                                "empty_mask_convention": "both empty: Dice 1, HD95 0, NSD 1; one empty: Dice 0, "
                                                         "NSD 0, HD95 inf (excluded from means, counted n_inf)"})
