"""The training loop (teachers and students), its schedule, DDP and the two recipes."""

from distillation.train.budget import LabelBudget, prepare_budget_data
from distillation.train.distributed import DistContext, init_distributed, shutdown_distributed
from distillation.train.loop import (
    FINAL,
    LATEST,
    RunSpec,
    TrainingInterrupted,
    fit,
    read_resume_state,
    validation_dice,
)
from distillation.train.metrics import MetricsLog
from distillation.train.models import ModelPair, StudentWithHeads, freeze
from distillation.train.recipes import distill, prepare_data, teacher_architecture, train_teacher
from distillation.train.run_dir import RunState, check_out_dir, clear_run, run_state
from distillation.train.schedule import build_optimizer, poly_lr, set_lr

__all__ = [
    "FINAL",
    "LATEST",
    "DistContext",
    "LabelBudget",
    "MetricsLog",
    "ModelPair",
    "RunSpec",
    "RunState",
    "StudentWithHeads",
    "TrainingInterrupted",
    "build_optimizer",
    "check_out_dir",
    "clear_run",
    "distill",
    "fit",
    "freeze",
    "init_distributed",
    "poly_lr",
    "prepare_budget_data",
    "prepare_data",
    "read_resume_state",
    "run_state",
    "set_lr",
    "shutdown_distributed",
    "teacher_architecture",
    "train_teacher",
    "validation_dice",
]
