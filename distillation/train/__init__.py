"""The training loop (teachers and students), its schedule, DDP and the two recipes."""

from distillation.train.distributed import DistContext, init_distributed, shutdown_distributed
from distillation.train.loop import FINAL, LATEST, RunSpec, fit, read_resume_state, validation_dice
from distillation.train.metrics import MetricsLog
from distillation.train.models import ModelPair, StudentWithHeads, freeze
from distillation.train.recipes import distill, prepare_data, teacher_architecture, train_teacher
from distillation.train.schedule import build_optimizer, poly_lr, set_lr

__all__ = [
    "FINAL",
    "LATEST",
    "DistContext",
    "MetricsLog",
    "ModelPair",
    "RunSpec",
    "StudentWithHeads",
    "build_optimizer",
    "distill",
    "fit",
    "freeze",
    "init_distributed",
    "poly_lr",
    "prepare_data",
    "read_resume_state",
    "set_lr",
    "shutdown_distributed",
    "teacher_architecture",
    "train_teacher",
    "validation_dice",
]
