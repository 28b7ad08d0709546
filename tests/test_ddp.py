"""Scale-out: `torchrun --nproc-per-node 2 -m distillation.cli train-teacher` runs DDP over gloo (CPU).

Each rank draws different patches (per-rank seeding); DDP averages the gradients, so after
training every rank must hold bit-identical weights. The loop measures that itself (rank 0's
weights broadcast and compared on every rank) and records it in metrics.json.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from distillation.data import write_toy_dataset  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.slow]

PRESET = """
name = "ddp-test"
[data]
patch_size = [16, 16, 16]
batches_per_epoch = 2
val_fraction = 0.34
val_patches_per_case = 1
num_workers = 0
[network]
base_features = 4
max_features = 16
max_stages = 3
[train]
epochs = 2
checkpoint_every = 1
progress = false
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "distillation.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_two_gloo_ranks_keep_identical_weights(tmp_path) -> None:
    raw = write_toy_dataset(tmp_path / "raw", n_cases=3, shape=(20, 20, 20))
    preset = tmp_path / "ddp.toml"
    preset.write_text(PRESET)
    out = tmp_path / "out"
    proc = _torchrun("train-teacher", "--config", str(preset), "--dataset", str(raw), "--out", str(out),
                     "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["world_size"] == 2
    assert summary["max_weight_divergence_across_ranks"] == 0.0
    assert [r["epoch"] for r in summary["epochs"]] == [0, 1]
    # rank 0 alone printed the summary and wrote the checkpoint
    assert proc.stdout.count('"world_size": 2') == 1
    assert (out / "checkpoint_final.pt").exists()

    # distillation: the KD heads live in the DDP-wrapped module with the student, so they stay
    # in sync too (the divergence check covers student and heads)
    student = tmp_path / "student"
    proc = _torchrun("distill", "--config", str(preset), "--dataset", str(raw), "--out", str(student),
                     "--teacher", str(out / "checkpoint_final.pt"), "--width", "0.5",
                     "--kd", "logit,sard,ca", "--epochs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((student / "metrics.json").read_text())
    assert summary["world_size"] == 2 and summary["max_weight_divergence_across_ranks"] == 0.0
    assert {"train_logit", "train_sard", "train_ca"} <= set(summary["epochs"][0])
