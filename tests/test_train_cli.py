"""`distill train-teacher` as a researcher runs it: Ctrl-C in a real subprocess saves a checkpoint and
prints the command that resumes it; a folder holding a run needs --resume or --force; results print as
a table or as --json without 16-digit floats. Tiny brain phantoms (8 mm), a 3-stage 4-feature U-Net."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from distillation.checkpoint import load_checkpoint  # noqa: E402
from distillation.cli import main  # noqa: E402

pytestmark = pytest.mark.train

STEPS = 100
PRESET = f"""
name = "ctrl-c"
[data]
patch_size = [16, 16, 16]
batches_per_epoch = {STEPS}
val_fraction = 0.34
val_patches_per_case = 1
num_workers = 0
[network]
base_features = 4
max_features = 16
max_stages = 3
[train]
epochs = 2
progress = false
threads = 1
"""


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    assert main(["phantoms", "brain", "--cases", "3", "--spacing", "8", "--out", str(root)]) == 0
    return root / "Dataset501_BrainTumorPhantom"


def _interrupt_mid_epoch(argv: list[str], out: Path) -> subprocess.CompletedProcess:
    """Run `distill ARGV` in its own process group and send it SIGINT (as Ctrl-C in a terminal does)
    once the first epoch is recorded, i.e. during the second epoch."""
    proc = subprocess.Popen([sys.executable, "-m", "distillation.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / "training_curve.png").exists():  # written last when an epoch is recorded
        assert proc.poll() is None, f"training ended before its first epoch: {proc.communicate()}"
        assert time.monotonic() < deadline, "no epoch finished within 300 s"
        time.sleep(0.05)
    time.sleep(1.0)  # into the second epoch's steps (about 30 ms each here)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_ctrl_c_saves_a_checkpoint_prints_how_to_resume_and_the_run_resumes(phantoms, tmp_path, capsys) -> None:
    preset = tmp_path / "ctrl-c.toml"
    preset.write_text(PRESET)
    out = tmp_path / "teacher"
    argv = ["train-teacher", "--config", str(preset), "--dataset", str(phantoms), "--out", str(out)]
    r = _interrupt_mid_epoch(argv, out)

    assert r.returncode == 130, r.stderr
    assert r.stdout == ""
    stopped, how = r.stderr.splitlines()[-2:]
    m = re.fullmatch(rf"distill: interrupted in epoch 2/2 at step (\d+)/{STEPS}; saved {re.escape(str(out))}"
                     r"/checkpoint_latest.pt \(1 epoch done\)", stopped)
    assert m, stopped
    step = int(m.group(1))
    assert 0 < step < STEPS, "the interrupt must land mid-epoch"
    assert how == f"resume with: distill {shlex.join(argv)} --resume"
    ck = load_checkpoint(out / "checkpoint_latest.pt")
    assert ck.epoch == 1
    assert ck.extra["interrupted"] == {"epoch": 2, "step": step, "steps_per_epoch": STEPS}
    assert ck.optimizer is not None and ck.optimizer["state"], "the optimizer state must be saved too"
    assert not (out / "checkpoint_final.pt").exists()
    first = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in first] == [0]

    # the same command again is refused: it would start over an unfinished run
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"distill: error: --out {out} already holds an unfinished run (checkpoint_latest.pt, 1 of 2 "
                   "epochs done, interrupted): pass --resume to continue it, --force to train again from "
                   "scratch, or another --out\n")

    # the printed command resumes it: epoch 1 kept, epoch 2 run again from its start, then finished
    assert main(shlex.split(how.removeprefix("resume with: "))[1:]) == 0
    records = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [e["epoch"] for e in records] == [0, 1]
    assert records[0] == first[0]
    final = load_checkpoint(out / "checkpoint_final.pt")
    assert final.epoch == 2 and "interrupted" not in final.extra
    table = capsys.readouterr().out
    assert re.search(r"^epochs +2$", table, re.M) and re.search(r"^checkpoint +\S+checkpoint_final.pt$", table, re.M)

    # a finished run is not trained over without --resume or --force either
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"distill: error: --out {out} already holds a finished run (checkpoint_final.pt, 2 epochs): pass "
        "--resume to continue it (with a larger --epochs), --force to train again from scratch, or another --out\n")
    assert load_checkpoint(out / "checkpoint_final.pt").epoch == 2

    # --force starts again from scratch (one epoch now), and --json reports it for machines
    assert main([*argv, "--force", "--epochs", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["epochs_completed"] == 1 and report["checkpoint"] == str(out / "checkpoint_final.pt")
    assert [e["epoch"] for e in json.loads((out / "metrics.json").read_text())["epochs"]] == [0]
    assert load_checkpoint(out / "checkpoint_final.pt").epoch == 1
    assert load_checkpoint(out / "checkpoint_latest.pt").epoch == 1
    for value in _floats(report):
        assert len(re.sub(r"[^0-9]", "", f"{value!r}".split("e")[0]).strip("0")) <= 6, value


def _floats(obj):
    if isinstance(obj, float):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _floats(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _floats(v)


def test_resume_and_force_exclude_each_other(phantoms, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train-teacher", "--config", "brain-tiny", "--dataset", str(phantoms), "--out", str(tmp_path),
              "--resume", "--force"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("distill train-teacher: error: argument --force: not "
                                                        "allowed with argument --resume")
