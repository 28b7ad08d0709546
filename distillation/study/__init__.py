"""``distill study``: the distillation study (teacher, students × KD recipes × seeds) in one command.

:func:`run_study` generates phantoms, trains the teacher and the students, exports each to ONNX,
scores it on the held-out cases through the node's own inference, times it with the node's runtime,
and writes a markdown table and plots; it resumes where it stopped.
"""

from distillation.study.config import (
    KD_RECIPES,
    DatasetSpec,
    EvaluationSpec,
    ReportSpec,
    RunKey,
    StudentsSpec,
    StudyConfig,
    TrainingSpec,
    load_study,
    parse_study,
    study_path,
)
from distillation.study.measure import latency, network_cost
from distillation.study.report import summarise, targets, write_report
from distillation.study.runner import StudyResult, collect_rows, dataset_dir, make_preset, run_study

__all__ = [
    "KD_RECIPES",
    "DatasetSpec",
    "EvaluationSpec",
    "ReportSpec",
    "RunKey",
    "StudentsSpec",
    "StudyConfig",
    "StudyResult",
    "TrainingSpec",
    "collect_rows",
    "dataset_dir",
    "latency",
    "load_study",
    "make_preset",
    "network_cost",
    "parse_study",
    "run_study",
    "study_path",
    "summarise",
    "targets",
    "write_report",
]
