"""distillation.evaluate.case_figure: which slices a case picture shows, and that it writes a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distillation.evaluate.case_figure import case_figure, slices_to_show


def _case() -> tuple[np.ndarray, np.ndarray]:
    reference = np.zeros((20, 16, 16), dtype=np.uint8)
    reference[10:13, 4:8, 4:8] = 1
    reference[11, 5:7, 5:7] = 2  # slice 11 has the largest area (16 voxels, either label)
    reference[11, 8, 4:8] = 1
    image = np.random.default_rng(0).normal(100, 5, reference.shape).astype(np.float32) + 40 * (reference > 0)
    return image, reference


def test_slices_show_the_reference_and_each_false_positive() -> None:
    _, reference = _case()
    right = reference.copy()
    wrong = reference.copy()
    wrong[2:5, 10:14, 10:14] = 1  # a false positive centred on slice 3, away from the reference
    wrong[15, 0, 0] = 1  # a smaller one: only the largest counts
    shown = slices_to_show(reference, {"right": right, "wrong": wrong})
    assert shown == [(11, "reference largest (20 voxels)"), (3, "wrong: false positive, 48 voxels")]


def test_slices_without_anything_fall_back_to_the_middle() -> None:
    empty = np.zeros((8, 4, 4), dtype=np.uint8)
    assert slices_to_show(empty, {"m": empty}) == [(4, "middle slice (no reference, no prediction)")]


def test_case_figure_writes_a_png(tmp_path: Path) -> None:
    image, reference = _case()
    wrong = reference.copy()
    wrong[2:5, 10:14, 10:14] = 1
    out = case_figure(image, reference, {"wrong": wrong}, tmp_path / "case.png", title="case",
                      label_names={1: "edema", 2: "core"})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp.png"))
