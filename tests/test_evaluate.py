"""distillation.evaluate: metrics on known masks, the empty-mask convention, and an end-to-end run of an
exported model through the node's inference on a tiny nnU-Net dataset."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from distillation.cli import main as distill_main  # noqa: E402
from distillation.evaluate import (  # noqa: E402
    aggregate,
    brats_regions_for,
    case_metrics,
    iter_cases,
    structure_metrics,
)
from distillation.export import export_onnx, make_card  # noqa: E402


def _cube(shape: tuple[int, int, int], lo: tuple[int, int, int], size: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = True
    return m


def test_identical_masks() -> None:
    ref = _cube((24, 24, 24), (6, 6, 6), 10)
    m = structure_metrics(ref, ref, (1.0, 1.0, 1.0))
    assert (m.dice, m.hd95, m.nsd) == (1.0, 0.0, 1.0)


@pytest.mark.parametrize(("spacing", "expected_mm"), [((1.0, 1.0, 1.0), 3.0), ((2.0, 1.0, 0.5), 1.5)])
def test_shifted_cube_hd95_is_the_shift_in_mm(spacing: tuple[float, float, float], expected_mm: float) -> None:
    ref = _cube((24, 24, 24), (6, 6, 6), 10)
    pred = _cube((24, 24, 24), (6, 6, 9), 10)  # 3 voxels along x (j)
    m = structure_metrics(pred, ref, spacing, nsd_tolerance_mm=0.1)
    assert m.hd95 == pytest.approx(expected_mm)
    assert m.dice == pytest.approx(2 * 700 / 2000)
    assert 0.0 < m.nsd < 1.0


def test_empty_mask_convention() -> None:
    empty = np.zeros((8, 8, 8), dtype=bool)
    full = _cube((8, 8, 8), (2, 2, 2), 3)
    both = structure_metrics(empty, empty, (1, 1, 1))
    assert (both.dice, both.hd95, both.nsd) == (1.0, 0.0, 1.0)
    one = structure_metrics(full, empty, (1, 1, 1))
    assert one.dice == 0.0 and math.isinf(one.hd95) and one.nsd == 0.0
    assert one.to_dict()["hd95"] == "inf"
    summary = aggregate([{"x": both}, {"x": one}])
    assert summary["x"]["dice"]["mean"] == 0.5
    assert summary["x"]["hd95"] == {"mean": 0.0, "median": 0.0, "std": 0.0, "n_inf": 1}


def test_brats_regions() -> None:
    ref = np.zeros((16, 16, 16), dtype=np.uint8)
    ref[4:12, 4:12, 4:12] = 1
    ref[6:10, 6:10, 6:10] = 2
    ref[7:9, 7:9, 7:9] = 3
    pred = ref.copy()
    pred[pred == 2] = 1  # core mislabeled as edema
    card = make_card(name="b", version="1", channel_names=["T1", "T1ce", "T2", "FLAIR"],
                     labels={"edema": 1, "necrotic core": 2, "enhancing tumor": 3}, target_spacing=(1, 1, 1),
                     patch_size=(16, 16, 16), normalization=[{"scheme": "zscore"}] * 4)
    regions = brats_regions_for(card["labels"])
    assert regions == {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing": (3,)}
    m = case_metrics(pred, ref, (1, 1, 1), {"Edema": 1, "Necrotic core": 2, "Enhancing tumor": 3}, regions)
    assert m["whole_tumor"].dice == 1.0 and m["enhancing"].dice == 1.0
    assert m["Necrotic core"].dice == 0.0 and m["tumor_core"].dice == pytest.approx(2 * 8 / (8 + 64))


def _write_nifti(array_kij: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    import nibabel as nib

    affine_lps = np.diag([*spacing, 1.0])
    p = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps @ p
    nib.save(nib.Nifti1Image(array_kij.transpose(2, 1, 0), affine_ras), str(path))


class _FlairThreshold(torch.nn.Module):
    """A model of known output: lesion wherever the z-scored FLAIR (channel 1) is above its mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[1, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_evaluate_exported_model_through_node_inference(tmp_path: Path) -> None:
    root = tmp_path / "Dataset900_Tiny"
    (root / "imagesTs").mkdir(parents=True)
    (root / "labelsTs").mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "FLAIR"},
                                                   "labels": {"background": 0, "lesion": 1},
                                                   "file_ending": ".nii.gz", "numTraining": 0}))
    for i, shift in enumerate((0, 2)):  # FLAIR's bright cube: on the lesion, then 2 voxels beside it
        lab = np.zeros((20, 24, 24), dtype=np.uint8)
        lab[6:14, 8:16, 8:16] = 1
        flair = np.zeros_like(lab)
        flair[6:14, 8:16, 8 + shift:16 + shift] = 1
        for c, bright in enumerate((lab, flair)):
            _write_nifti(100 + 50 * bright.astype(np.float32), (2.0, 2.0, 2.0),
                         root / "imagesTs" / f"case_{i:03d}_{c:04d}.nii.gz")
        _write_nifti(lab, (2.0, 2.0, 2.0), root / "labelsTs" / f"case_{i:03d}.nii.gz")
    cases = list(iter_cases(root, "Ts"))
    assert [c.identifier for c in cases] == ["case_000", "case_001"]
    assert cases[0].load_volumes()[0].spacing == (2.0, 2.0, 2.0)
    assert cases[0].load_label().shape == (20, 24, 24)

    card = make_card(name="tiny", version="0.0.1", channel_names=["T1", "FLAIR"], labels={"lesion": 1},
                     target_spacing=(2.0, 2.0, 2.0), patch_size=(16, 16, 16),
                     normalization=[{"scheme": "zscore", "use_nonzero_mask": False}] * 2)
    export_onnx(_FlairThreshold(), card, tmp_path / "tiny.onnx")
    out = tmp_path / "results.json"
    # as a researcher runs it: a table on stdout and nothing on stderr (no MONAI FutureWarning)
    r = subprocess.run([sys.executable, "-m", "distillation.cli", "evaluate", str(tmp_path / "tiny.onnx"),
                        "--dataset", str(root), "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stderr) == (0, "")
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"2 cases of {root} (imagesTs), ") and lines[0].endswith(f"written to {out}")
    assert lines[2].split() == ["structure", "Dice", "HD95", "mm", "NSD@1mm", "HD95", "inf", "cases"]
    assert lines[4].split()[:2] == ["Lesion", "0.875"] and lines[4].split()[-2:] == ["0", "2"]
    res = json.loads(out.read_text())
    assert sorted(res["cases"]) == ["case_000", "case_001"]
    assert set(res["summary"]) == {"Lesion"}
    assert [res["cases"][c]["Lesion"]["dice"] for c in ("case_000", "case_001")] == [1.0, 0.75]  # 2*384/1024
    assert [res["cases"][c]["Lesion"]["predicted_voxels"] for c in ("case_000", "case_001")] == [512, 512]
    for case in res["cases"].values():
        assert case["Lesion"]["reference_voxels"] == 512
    assert res["summary"]["Lesion"]["dice"]["mean"] == 0.875
    assert "one empty" in res["settings"]["empty_mask_convention"]
    # lesion-wise: one 4.1 ml lesion a case, found in both (a 1-voxel overlap suffices), none invented
    assert res["lesions"]["summary"] == {"all": {"tp": 2, "fp": 0, "fn": 0, "f1": 1.0},
                                         "small": {"tp": 0, "fp": 0, "fn": 0, "f1": None}}
    assert res["lesions"]["cases"]["case_001"]["reference_ml"] == [4.096]
    # the same model and case, as a picture
    png = tmp_path / "case.png"
    rc = distill_main(["show-case", str(tmp_path / "tiny.onnx"), "--dataset", str(root), "--case", "case_001",
                       "--channel", "1", "--out", str(png)])
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert distill_main(["show-case", str(tmp_path / "tiny.onnx"), "--dataset", str(root), "--case", "case_009",
                         "--out", str(png)]) == 2  # no such case: a message, not a traceback
    assert distill_main(["show-case", str(tmp_path / "tiny.onnx"), "--dataset", str(root), "--case", "case_001",
                         "--channel", "2", "--out", str(png)]) == 2


def test_largest_component_is_kept_only_where_it_raises_validation_dice() -> None:
    from distillation.evaluate.postprocessing import choose_largest_component

    ref = np.zeros((24, 24, 24), np.uint8)
    ref[4:12, 4:12, 4:12] = 1  # one lesion of label 1
    ref[14:18, 14:18, 14:18] = 2  # label 2 really has two parts
    ref[20:22, 2:4, 2:4] = 2
    pred = ref.copy()
    pred[18:20, 18:20, 18:20] = 1  # a false-positive island of label 1 far from the lesion
    decision = choose_largest_component([(pred, ref)], [1, 2, 3])
    assert decision["largest_component"] == [1]
    before, after = decision["dice"]["1"]
    assert after == 1.0 and before < 1.0
    assert decision["dice"]["2"][1] < decision["dice"]["2"][0]  # would drop the real second part
    assert decision["dice"]["3"] == [1.0, 1.0]  # absent in both: nothing to gain
    with pytest.raises(ValueError, match="at least one validation case"):
        choose_largest_component([], [1])
