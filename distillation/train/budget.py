"""A student's label budget: which cases it trains on with labels, which without (docs/label-free.md).

The on-premises case: a hospital has a teacher and many scans nobody has labelled. A
:class:`LabelBudget` says

* ``unlabelled``: a folder of images (:func:`~distillation.data.unlabelled.find_unlabelled`) the
  student learns from through the teacher's soft targets only; their labels, if any lie beside
  them, are never opened. It may be the ``--dataset`` folder itself: then its validation cases and
  the labelled ones are left out of it (by identifier), so the unlabelled cases are the rest of
  the training split;
* ``labelled_cases``: N, how many of ``--dataset``'s training cases keep their labels: the first N
  of the training split sorted by identifier, the same N for every run of that dataset and
  validation fraction, so a KD run and its supervised control on the budget share them. Only
  those N label files and the validation cases' are read. ``None`` keeps every label.

:func:`prepare_budget_data` preprocesses exactly those cases and returns what
:func:`~distillation.train.recipes.prepare_data` returns; ``split`` then names the ``train``
(labelled) cases, the ``val`` cases and the ``unlabelled`` ones. Without ``--dataset`` there is no
label at all, hence no validation Dice: score the student afterwards with ``distill evaluate``.
Cases are preprocessed with the teacher's plan, or, for a teacher that has none (one imported
from nnU-Net), with the plan its model card describes; no label is read to plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillation.config import Preset
from distillation.data.loader import PatchBatches, validation_patches
from distillation.data.plan import DataPlan, plan_from_card
from distillation.data.preprocess import load_preprocessed, preprocess_dataset
from distillation.data.raw import read_dataset
from distillation.data.unlabelled import find_unlabelled, preprocess_unlabelled
from distillation.train.distributed import DistContext
from pacsnode.errors import ConfigError

__all__ = ["LabelBudget", "split_cases", "prepare_budget_data", "UNLABELLED_CACHE"]

UNLABELLED_CACHE = "preprocessed-unlabelled"


@dataclass(frozen=True)
class LabelBudget:
    """Unlabelled images (a folder or None) and how many labelled cases (None = all); see the module doc."""

    unlabelled: Path | None = None
    labelled_cases: int | None = None

    def check(self, dataset: Path | None, kd_on: bool) -> None:
        """One :class:`ConfigError` per impossible combination, before any work."""
        n = self.labelled_cases
        if n is not None and n < 0:
            raise ConfigError(f"--labelled-cases must be zero or a positive integer, got {n}")
        if dataset is None and self.unlabelled is None:
            raise ConfigError("--dataset is required unless --unlabelled gives the training images, got neither")
        if dataset is None and n:
            raise ConfigError(f"--labelled-cases takes its cases from --dataset, got {n} without --dataset")
        if self.unlabelled is not None and not kd_on:
            raise ConfigError("--unlabelled trains on the teacher's soft targets, so it needs a KD term "
                              "(--kd logit, sard or ca, or a preset with one), got none")
        if self.unlabelled is None and n == 0:
            raise ConfigError("--labelled-cases 0 leaves nothing to train on without --unlabelled, got "
                              "no --unlabelled folder")


def split_cases(identifiers: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """(train, val): the last ``round(n · val_fraction)`` (at least one) cases validate."""
    if len(identifiers) < 2 or val_fraction <= 0:
        return identifiers, []
    n_val = max(1, round(len(identifiers) * val_fraction))
    return identifiers[:-n_val], identifiers[-n_val:]


def prepare_budget_data(preset: Preset, budget: LabelBudget, dataset: Path | None, out_dir: Path,
                        ctx: DistContext, plan: DataPlan | None, teacher_card: Mapping[str, Any] | None = None
                        ) -> tuple[DataPlan, PatchBatches, list, dict[str, list[str]]]:
    """Preprocess the budget's cases (rank 0; the others wait) and build the patch stream and validation
    set, with the teacher's ``plan`` (or, for a teacher without one, the plan its model card describes)."""
    plan = plan if plan is not None else plan_from_card(teacher_card or {})
    labelled: list[str] = []
    val: list[str] = []
    if dataset is not None:
        train, val = split_cases([c.identifier for c in read_dataset(dataset).cases], preset.data.val_fraction)
        n = len(train) if budget.labelled_cases is None else budget.labelled_cases
        if n > len(train):
            raise ConfigError(f"--labelled-cases must be at most the {len(train)} training cases of {dataset} "
                              f"(the other {len(val)} validate), got {n}")
        labelled = train[:n]
    unlabelled = []
    if budget.unlabelled is not None:
        taken = set(labelled) | set(val)
        unlabelled = [c for c in find_unlabelled(budget.unlabelled, len(plan.channel_names))
                      if c.identifier not in taken]
        if not unlabelled:
            raise ConfigError(f"--unlabelled must hold cases besides --dataset's labelled and validation ones, "
                              f"got none left in {budget.unlabelled}")
    cache, ucache = out_dir / "preprocessed", out_dir / UNLABELLED_CACHE
    if ctx.is_main:
        if labelled or val:
            preprocess_dataset(dataset, cache, plan.patch_size, plan,  # type: ignore[arg-type]
                               identifiers=set(labelled) | set(val))
        if unlabelled:
            preprocess_unlabelled(unlabelled, ucache, plan)
    ctx.barrier()
    unlabelled_ids = [c.identifier for c in unlabelled]
    d = preset.data
    cases = load_preprocessed(cache, labelled) + load_preprocessed(ucache, unlabelled_ids)
    stream = PatchBatches(cases, plan.patch_size, d.batch_size, d.batches_per_epoch, preset.augment,
                          d.oversample_foreground, seed=preset.train.seed, rank=ctx.rank)
    val_patches = validation_patches(load_preprocessed(cache, val), plan.patch_size,
                                     d.val_patches_per_case) if val else []
    return plan, stream, val_patches, {"train": labelled, "val": val, "unlabelled": unlabelled_ids}
