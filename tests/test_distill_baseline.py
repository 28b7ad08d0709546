"""`distill baseline`: the no-network voxel classifier, end to end on tiny phantoms, and its Dice helper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distillation.cli import main
from distillation.evaluate.baseline import dice_scores, sample_voxels
from distillation.phantoms.case import PhantomCase
from distillation.phantoms.nnunet_raw import write_nnunet_dataset


def test_dice_scores_are_exact_on_known_masks() -> None:
    ref = np.zeros((4, 4, 4), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[0, 0, :4] = 1                                          # 4 voxels of label 1
    pred[0, 0, :2] = 1                                         # 2 of them found
    ref[3, 3, 3] = 2
    pred[1, 1, 1] = 3                                          # a false label 3, label 2 missed
    scores = dice_scores(pred, ref, {"background": 0, "a": 1, "b": 2, "c": 3, "d": 4},
                         {"ab": (1, 2)})
    assert scores == {"a": 2 * 2 / 6, "b": 0.0, "c": 0.0, "d": 1.0, "ab": 2 * 2 / 7}


def test_voxel_sampling_takes_every_voxel_of_a_rare_label() -> None:
    labels = np.zeros(10_000, dtype=np.uint8)
    labels[:5] = 7
    idx = sample_voxels(labels, np.random.default_rng(0), per_label=50, background=100)
    assert set(np.flatnonzero(labels == 7)) <= set(idx.tolist())
    assert 50 <= len(idx) <= 155 and len(np.unique(idx)) == len(idx)


@pytest.fixture(scope="module")
def tiny_hard_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    assert main(["phantoms", "brain", "--setting", "hard", "--cases", "2", "--test-cases", "2",
                 "--spacing", "4", "--seed", "40", "--out", str(out)]) == 0
    return out / "Dataset511_BrainTumorPhantomHard"


def test_baseline_runs_end_to_end_and_writes_its_results(tiny_hard_dataset: Path, tmp_path: Path,
                                                         capsys) -> None:
    meta = json.loads((tiny_hard_dataset / "dataset.json").read_text())
    assert meta["labels"]["lateral_ventricles"] == 5 and len(meta["labels"]) == 16
    out = tmp_path / "baseline.json"
    args = ["baseline", str(tiny_hard_dataset), "--out", str(out), "--per-label", "300",
            "--background", "1500", "--max-iter", "10"]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert (result["train_cases"], result["test_cases"], result["modality"]) == (2, 2, "MR")
    assert len(result["features"]) == 4 * 5 and result["features"][0] == "T1:z"
    assert set(result["dice_per_label"]) == {k for k, v in meta["labels"].items() if v}
    assert set(result["dice_per_region"]) == {"whole_tumor", "tumor_core", "enhancing"}
    assert result["mean_dice_labels"] == pytest.approx(np.mean(list(result["dice_per_label"].values())))
    for name, value in result["dice_per_label"].items():
        assert value == pytest.approx(np.mean([c["dice"][name] for c in result["per_case"]]), abs=1e-5)
    printed = capsys.readouterr().out
    assert "mean over labels" in printed and "mean WT/TC/ET" in printed and f"wrote {out}" in printed
    # seeded: a second run gives the same numbers
    again = tmp_path / "again.json"
    assert main([*args[:3], str(again), *args[4:]]) == 0
    assert json.loads(again.read_text())["dice_per_label"] == result["dice_per_label"]


def _blob_case(seed: int) -> PhantomCase:
    """A case a voxel classifier must get right: label 1 a bright ball, label 2 a darker rod, noisy."""
    rng = np.random.default_rng(seed)
    k, i, j = np.ogrid[:24, :24, :24]
    labels = np.zeros((24, 24, 24), dtype=np.uint8)
    c = rng.integers(7, 17, 3)
    labels[(k - c[0]) ** 2 + (i - c[1]) ** 2 + (j - c[2]) ** 2 < rng.integers(9, 25)] = 1
    labels[:, rng.integers(2, 22), 3:21] = 2
    image = np.choose(labels, [100.0, 300.0, 200.0]) + rng.normal(0, 10, labels.shape)
    return PhantomCase(images={"A": image.astype(np.float32)}, labels=labels, affine_lps=np.diag([2.0, 2, 2, 1]),
                       spacing=(2.0, 2.0, 2.0), label_names={0: "background", 1: "ball", 2: "rod"})


def test_baseline_scores_a_separable_task_near_one(tmp_path: Path) -> None:
    folder = write_nnunet_dataset([_blob_case(s) for s in range(2)], tmp_path, 999, "Blobs",
                                  test_cases=[_blob_case(s) for s in (10, 11)])
    out = tmp_path / "r.json"
    assert main(["baseline", str(folder), "--out", str(out), "--max-iter", "20"]) == 0
    result = json.loads(out.read_text())
    assert result["dice_per_region"] == {} and result["mean_dice_regions"] is None
    assert result["dice_per_label"]["ball"] > 0.85 and result["dice_per_label"]["rod"] > 0.9  # 0.928, 0.967


def test_baseline_without_a_dataset_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["baseline", str(tmp_path), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err == f"distill: error: a dataset folder must hold dataset.json, got none in {tmp_path}\n"
