"""Choose a model's post-processing on its validation cases, as nnU-Net does, for its model card.

nnU-Net's ``determine_postprocessing`` keeps only the largest connected component of a label
when that raises the label's mean Dice over the cross-validation cases. This is that rule per
label (the card's ``postprocessing.largest_component``, applied by the node's
:func:`pacsnode.inference.postprocessing.keep_largest_component`); nnU-Net's extra "whole
foreground as one" pass is not done. The decision is made on validation cases, never on the
held-out test cases it is then scored on, and is applied to teacher and students alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from distillation.evaluate.metrics import dice
from pacsnode.inference.postprocessing import keep_largest_component

__all__ = ["choose_largest_component", "decide_postprocessing", "card_with_postprocessing"]


def choose_largest_component(cases: Sequence[tuple[np.ndarray, np.ndarray]],
                             label_values: Sequence[int]) -> dict[str, Any]:
    """``{"largest_component": [labels it helps], "dice": {label: [mean before, mean after]}}``.

    ``cases``: (predicted labels, reference labels) pairs. Keeping a label's largest component
    only turns that label's other voxels into background, so the other labels' Dice is unchanged
    and each label is decided on its own Dice.
    """
    if not cases:
        raise ValueError("choosing post-processing needs at least one validation case, got none")
    chosen, means = [], {}
    for value in label_values:
        before, after = [], []
        for pred, ref in cases:
            r = ref == value
            before.append(dice(pred == value, r))
            after.append(dice(keep_largest_component(pred.copy(), [value]) == value, r))
        b, a = float(np.mean(before)), float(np.mean(after))
        means[str(value)] = [b, a]
        if a > b:
            chosen.append(int(value))
    return {"largest_component": chosen, "dice": means}


def decide_postprocessing(model_path: str | os.PathLike, dataset: str | os.PathLike, identifiers: Sequence[str],
                          split: str = "Tr", threads: int = 2, progress: bool = False) -> dict[str, Any]:
    """Run the model (its card's post-processing switched off) on the named validation cases and
    choose, per foreground label, whether to keep only its largest component."""
    from distillation.evaluate.run import predict_cases
    from pacsnode.inference import Model

    model = Model.load(model_path, threads=threads)
    if model.card.postprocessing.largest_component:
        raise ValueError(f"post-processing must be chosen on a model without it, got {model_path} with "
                         f"largest_component {list(model.card.postprocessing.largest_component)}")
    values = [int(lab["value"]) for lab in model.card.to_dict()["labels"] if int(lab["value"]) != 0]
    cases = [(pred, ref) for _, pred, ref, _ in predict_cases(model, dataset, split, identifiers=identifiers,
                                                              progress=progress)]
    return {**choose_largest_component(cases, values), "cases": list(identifiers), "split": split,
            "rule": "keep the largest connected component of a label when that raises its mean validation Dice"}


def card_with_postprocessing(card: Mapping[str, Any], largest_component: Sequence[int]) -> dict[str, Any]:
    """A copy of a model card whose post-processing keeps the largest component of those labels."""
    return {**card, "postprocessing": {"largest_component": [int(v) for v in largest_component]}}
