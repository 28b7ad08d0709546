"""Study presets (``distillation/presets/study-*.toml``) → a frozen, typed :class:`StudyConfig`.

Walked with pacsnode's config walker, so a misspelt key or a wrong value is one
:class:`~pacsnode.errors.ConfigError` naming the key. Tables:

``[dataset]``     which phantoms (``brain`` / ``ct``), how many training and held-out cases, spacing, seed
``[training]``    the training preset (bundled name or file) and the study's overrides of it
``[students]``    widths × KD recipes (or an explicit ``runs`` subset) × seeds; a run
                  "WIDTH:RECIPE:LABELS" has a label budget (docs/label-free.md): only the first
                  LABELS training cases keep their labels; a KD recipe also learns from the other
                  training cases through the teacher's soft targets, ``none`` (the supervised
                  control on the same budget) trains on the LABELS cases alone; LABELS 0 with a KD
                  recipe is label-free distillation
``[evaluation]``  ONNX Runtime threads for Dice/HD95 and latency, how many cases/windows are timed
``[report]``      the title and the file stem of ``docs/<stem>.md`` and its plots
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distillation.config import bundled_toml, kd_recipe_names, read_toml
from pacsnode.config import build_dataclass  # the one key-naming walker
from pacsnode.errors import ConfigError

__all__ = ["DatasetSpec", "TrainingSpec", "StudentsSpec", "EvaluationSpec", "ReportSpec", "StudyConfig",
           "RunKey", "KD_RECIPES", "load_study", "parse_study", "study_path"]

# A KD recipe as written in a study preset → the terms ``distill distill --kd`` takes.
KD_RECIPES: dict[str, str] = {"none": "", "logit": "logit", "sard": "sard", "ca": "ca",
                              "logit+sard+ca": "logit,sard,ca"}
_GRID_RECIPES = tuple(KD_RECIPES)  # the default grid: the term recipes
# and every bundled KD recipe (presets/kd-NAME.toml, docs/kd-recipes.md) by its NAME
KD_RECIPES.update({name: name for name in kd_recipe_names()})


def _check(rule: Any, text: str) -> dict[str, Any]:
    return {"check": (rule, text)}


def _positive() -> dict[str, Any]:
    return _check(lambda v: v > 0, "a positive number")


def _non_negative() -> dict[str, Any]:
    return _check(lambda v: v >= 0, "zero or a positive number")


@dataclass(frozen=True)
class DatasetSpec:
    """[dataset]: phantoms written by ``distill phantoms KIND`` into WORK/data."""

    kind: Literal["brain", "ct"] = "brain"
    cases: int = field(default=200, metadata=_positive())
    test_cases: int = field(default=40, metadata=_positive())
    spacing: str = ""  # mm, "2" or "3,2,2"; "" = the phantom's default
    seed: int = 0
    tumor_radius_mm: str = ""  # brain only: "LO,HI" whole-tumor radius range; "" = the phantom's (2.5,35)
    setting: Literal["default", "hard"] = "default"  # phantom setting (docs/benchmark.md)


@dataclass(frozen=True)
class TrainingSpec:
    """[training]: the preset every run trains with; zero keeps the preset's value."""

    preset: str = "brain-cpu"
    teacher_epochs: int = field(default=0, metadata=_non_negative())
    student_epochs: int = field(default=0, metadata=_non_negative())
    batches_per_epoch: int = field(default=0, metadata=_non_negative())
    num_workers: int = field(default=-1, metadata=_check(lambda v: v >= -1, "-1 (the preset's) or more"))


@dataclass(frozen=True)
class StudentsSpec:
    """[students]: the grid ``widths × kd`` (or exactly ``runs``, as "WIDTH:RECIPE"), once per seed.

    A run written "WIDTH:RECIPE@0,1,2" has its own seeds, so that the comparison that needs a
    spread gets more seeds than the rest of the grid; "WIDTH:RECIPE:LABELS[@...]" has a label
    budget (module docstring)."""

    widths: tuple[float, ...] = field(default=(0.5, 0.25, 0.125), metadata=_check(
        lambda v: all(0 < w <= 1 for w in v), "numbers in (0, 1]"))
    kd: tuple[str, ...] = field(default=_GRID_RECIPES, metadata=_check(
        lambda v: all(k in KD_RECIPES for k in v), f"recipes from {', '.join(KD_RECIPES)}"))
    runs: tuple[str, ...] = ()
    seeds: tuple[int, ...] = field(default=(0,), metadata=_check(lambda v: len(v) > 0, "at least one seed"))


@dataclass(frozen=True)
class EvaluationSpec:
    """[evaluation]: measured through ``pacsnode.inference`` (ONNX Runtime) with ``threads`` threads."""

    threads: int = field(default=2, metadata=_positive())
    limit: int = field(default=0, metadata=_non_negative())  # held-out cases scored; 0 = all
    latency_cases: int = field(default=3, metadata=_positive())
    latency_windows: int = field(default=5, metadata=_positive())
    # keep a label's largest component where that helps on the run's validation cases (nnU-Net's rule)
    choose_postprocessing: bool = True


@dataclass(frozen=True)
class ReportSpec:
    """[report]: ``DOCS/<stem>.md``, ``DOCS/<stem>-dice-params.png``, ``-dice-latency.png``, ``-curves.png``."""

    title: str = "Distillation study"
    # never "study": docs/study.md is the study's hand-written report, which a run must not overwrite
    stem: str = field(default="study-run", metadata=_check(
        lambda v: v.replace("-", "").replace("_", "").isalnum() and v != "study",
        "letters, digits, '-' or '_', other than 'study' (docs/study.md is written by hand)"))


@dataclass(frozen=True)
class RunKey:
    """One student run: width factor, KD recipe name (a :data:`KD_RECIPES` key), seed and label
    budget (``None``: every label; N: the first N training cases, the rest unlabelled)."""

    width: float
    kd: str
    seed: int
    labels: int | None = None

    @property
    def name(self) -> str:
        budget = "" if self.labels is None else f"-l{self.labels}"
        return f"w{self.width:g}-{self.kd}{budget}-s{self.seed}"


@dataclass(frozen=True)
class StudyConfig:
    name: str = "study"
    description: str = ""
    dataset: DatasetSpec = DatasetSpec()
    training: TrainingSpec = TrainingSpec()
    students: StudentsSpec = StudentsSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    report: ReportSpec = ReportSpec()

    def student_runs(self) -> list[RunKey]:
        """Every student run, in the order they are trained (seed-major, then width, then recipe)."""
        seeds = tuple(self.students.seeds)
        if self.students.runs:
            grid = [_parse_run(r, i, seeds) for i, r in enumerate(self.students.runs)]
        else:
            grid = [(w, k, seeds, None) for w in self.students.widths for k in self.students.kd]
        extra = sorted({s for *_, run_seeds, _ in grid for s in run_seeds} - set(seeds))  # only "@" seeds
        return [RunKey(w, k, s, n) for s in (*seeds, *extra) for w, k, run_seeds, n in grid if s in run_seeds]

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _parse_run(text: str, i: int, seeds: tuple[int, ...]) -> tuple[float, str, tuple[int, ...], int | None]:
    run, at, seed_text = text.partition("@")
    width, _, kd = run.partition(":")
    kd, colon, label_text = kd.partition(":")
    try:
        w = float(width)
        run_seeds = tuple(int(s) for s in seed_text.split(",")) if at else seeds
        labels = int(label_text) if colon else None
    except ValueError:
        w, run_seeds, labels = -1.0, (), None
    if (not 0 < w <= 1 or kd not in KD_RECIPES or not run_seeds or len(set(run_seeds)) != len(run_seeds)
            or (labels is not None and (labels < 0 or (labels == 0 and kd == "none")))):
        raise ConfigError(f"students.runs[{i}] must be 'WIDTH:RECIPE' or 'WIDTH:RECIPE:LABELS', either with "
                          f"'@SEED,SEED,...', with WIDTH in (0, 1], RECIPE from {', '.join(KD_RECIPES)}, LABELS a "
                          f"label budget of zero or more cases (at least 1 with none) and distinct integer seeds, "
                          f"got {text!r}")
    return w, kd, run_seeds, labels


def parse_study(data: Mapping[str, Any]) -> StudyConfig:
    """Validate a parsed TOML document into a :class:`StudyConfig` (the mapping is not mutated)."""
    config = StudyConfig(**build_dataclass(StudyConfig, dict(data)))
    config.student_runs()  # validates students.runs
    return config


def study_path(name_or_path: str | Path) -> Path:
    """A file path as given, or a bundled study preset's name (``study-brain-small``)."""
    return bundled_toml(name_or_path, prefix="study-", what="CONFIG", kind="study preset")


def load_study(name_or_path: str | Path) -> StudyConfig:
    """Read and validate a study preset (a file or a bundled name)."""
    data = read_toml(study_path(name_or_path), "study preset")
    return parse_study(data)
