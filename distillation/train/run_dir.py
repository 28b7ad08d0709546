"""A training run's output folder: is it finished, interrupted or new, and what ``--force`` clears.

A run is *finished* when ``checkpoint_final.pt`` exists and *unfinished* when only
``checkpoint_latest.pt`` does (a periodic checkpoint, or the one Ctrl-C saves). Starting a new
run over either needs ``--resume`` (continue it) or ``--force`` (start again): training never
overwrites a run's results silently.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from distillation.train.loop import FINAL, LATEST
from pacsnode.errors import ConfigError

__all__ = ["RunState", "run_state", "check_out_dir", "clear_run", "RUN_FILES"]

# What a run writes into its folder (and --force removes); anything else there is left alone.
RUN_FILES = (LATEST, FINAL, "metrics.json", "metrics.csv", "training_curve.png", "run.json")
RUN_FOLDERS = ("preprocessed", "preprocessed-unlabelled")  # the second: distill --unlabelled


@dataclass(frozen=True)
class RunState:
    """What a folder holds: ``finished`` / ``unfinished`` and the epochs its checkpoint records."""

    kind: str
    checkpoint: Path
    epochs_done: int
    epochs_planned: int | None
    interrupted: dict | None


def run_state(out_dir: Path) -> RunState | None:
    """The run in ``out_dir``, or None when it holds no checkpoint."""
    from distillation.checkpoint import load_checkpoint

    for kind, name in (("finished", FINAL), ("unfinished", LATEST)):
        path = Path(out_dir) / name
        if path.is_file():
            ck = load_checkpoint(path)
            preset = ck.extra.get("preset") or {}
            planned = (preset.get("train") or {}).get("epochs")
            return RunState(kind, path, ck.epoch, int(planned) if planned else None,
                            ck.extra.get("interrupted"))
    return None


def _describe(state: RunState) -> str:
    if state.kind == "finished":
        return f"a finished run ({state.checkpoint.name}, {_epochs(state.epochs_done)})"
    planned = f" of {state.epochs_planned}" if state.epochs_planned else ""
    how = ", interrupted" if state.interrupted else ""
    return f"an unfinished run ({state.checkpoint.name}, {state.epochs_done}{planned} epochs done{how})"


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def check_out_dir(out_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse (``ConfigError``, one line) to train into a folder holding a run unless ``resume``
    or ``force`` says what to do with it."""
    if resume and force:
        raise ConfigError("--resume and --force exclude each other: --resume continues the run in --out, "
                          "--force starts it again from scratch")
    if resume or force:
        return
    state = run_state(out_dir)
    if state is not None:
        raise ConfigError(f"--out {out_dir} already holds {_describe(state)}: pass --resume to continue it"
                          f"{' (with a larger --epochs)' if state.kind == 'finished' else ''}, --force to "
                          "train again from scratch, or another --out")


def clear_run(out_dir: Path) -> list[Path]:
    """Remove what a run wrote into ``out_dir`` (checkpoints, metrics, plot, run.json, the
    preprocessed cache); returns the paths removed. Other files in the folder stay."""
    removed = []
    for name in RUN_FILES:
        path = Path(out_dir) / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    for name in RUN_FOLDERS:
        path = Path(out_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
    return removed
