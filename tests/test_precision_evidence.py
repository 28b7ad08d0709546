"""Reduced precision with evidence: measure a precision's Dice change on held-out phantoms, record it
in the card, and the node then runs the model at that precision (and only then); plus the pieces
that keep the whole case fast (spline matrices, native pixel reads, highdicom look-ups)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from onnx_models import make_card
from scipy import ndimage
from test_inference_backends import conv_model

from distillation.cli import main as distill_main
from distillation.export.precision import measure_precision, record_precision
from pacsnode.errors import ModelError
from pacsnode.inference import Model
from pacsnode.inference.backends import cpu_supports_bf16
from pacsnode.inference.resampling import resample_image, spline_matrix
from pacsnode.volume.reader import _native_plane


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ph")
    assert distill_main(["phantoms", "brain", "--cases", "1", "--test-cases", "2", "--spacing", "6",
                         "--seed", "11", "--out", str(root)]) == 0
    return next(root.glob("Dataset*"))


@pytest.mark.skipif(not cpu_supports_bf16(), reason="bf16 evidence needs a CPU with native bf16")
def test_bf16_evidence_is_measured_recorded_and_then_allowed(tmp_path, phantoms):
    path = tmp_path / "m.onnx"
    card = make_card(4, 3, patch_size=(16, 16, 16), target_spacing=(6.0, 6.0, 6.0),
                     normalization=[{"scheme": "zscore", "use_nonzero_mask": True}] * 4, crop_to_nonzero=True)
    conv_model(path, card, channels=4, classes=4)
    with pytest.raises(ModelError, match="precision bf16 must be validated in model test-model's card"):
        Model.load(path, precision="bf16")
    entry = measure_precision(path, phantoms, "bf16", threads=1)
    assert (entry["precision"], entry["backend"], entry["cases"]) == ("bf16", "openvino", 2)
    assert entry["dataset"] == f"{phantoms.name} imagesTs"
    per_label = entry["details"]["per_label"]
    assert set(per_label) == {"Edema", "Necrotic core", "Enhancing tumor"}
    changes = [v["change"] for v in per_label.values()]
    assert entry["dice_change"] == pytest.approx(np.mean(changes), abs=1e-6)
    assert entry["worst_dice_change"] == pytest.approx(min(changes), abs=1e-6)
    assert 0.99 <= entry["voxel_agreement"] <= 1.0  # bf16 of a 3-layer net: nearly every voxel agrees
    card = record_precision(path, entry)
    assert card["validated_precisions"] == [{k: v for k, v in entry.items() if k != "details"}]
    m = Model.load(path, threads=1, precision="bf16")
    assert (m.backend, m.precision) == ("openvino", "bf16")
    assert m.card.validated_precisions[0].cases == 2


@pytest.mark.parametrize("n_in,n_out", [(40, 23), (17, 31), (9, 9)])
def test_spline_matrix_is_scipy_zoom_along_one_axis(n_in, n_out):
    x = np.random.default_rng(n_in).standard_normal(n_in)
    ref = ndimage.zoom(x, n_out / n_in, order=3, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(spline_matrix(n_in, n_out, 3) @ x, ref, atol=1e-5)


def test_in_plane_resampling_clips_each_slice_to_its_own_range():
    img = np.random.default_rng(0).standard_normal((3, 20, 18)).astype(np.float32)
    img[1] *= 10  # one slice with a much wider range
    out = resample_image(img, (3, 11, 13), axis=0, order=3)
    for z in range(3):
        ref = ndimage.zoom(img[z].astype(np.float64), (11 / 20, 13 / 18), order=3, mode="nearest", grid_mode=True)
        np.testing.assert_allclose(out[z], np.clip(ref, img[z].min(), img[z].max()), atol=2e-5)


def _mr(tmp_path, **attrs) -> pydicom.Dataset:
    from test_volume import affine_for, write

    files = write(tmp_path, "T1", np.arange(16 * 20 * 3, dtype=np.float32).reshape(3, 16, 20),
                  affine_for("axial", spacing=(1.0, 1.0, 1.0), shape=(3, 16, 20)))
    ds = pydicom.dcmread(files[0])
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def test_native_pixels_equal_pydicom_and_odd_encodings_fall_back(tmp_path):
    ds = _mr(tmp_path)
    plane = _native_plane(ds)
    assert plane is not None
    np.testing.assert_array_equal(plane, ds.pixel_array)
    signed12 = _mr(tmp_path / "s", PixelRepresentation=1, BitsStored=12, HighBit=11)
    assert _native_plane(signed12) is None  # sign extension of 12-bit values: pydicom's job
    high = _mr(tmp_path / "h", BitsStored=8, HighBit=7)
    assert int(ds.pixel_array.max()) > 255 and _native_plane(high) is None  # bits above BitsStored are set


def test_highdicom_iod_lookups_are_memoised_and_answer_as_before():
    import highdicom._standard_utils as su
    import highdicom.sr.content as src

    import pacsnode.results.seg  # noqa: F401  (installs the memoised look-up)

    assert getattr(su.is_attribute_in_iod, "pacsnode_cached", False)
    assert src.is_attribute_in_iod is su.is_attribute_in_iod
    mr, seg = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.66.4"
    assert su.does_iod_have_pixel_data(mr) is True
    assert su.is_attribute_in_iod("NumberOfFrames", seg) is True
    assert su.is_attribute_in_iod("NumberOfFrames", mr) is False
    assert su.is_attribute_in_iod("PixelData", mr, ["IconImageSequence"]) is True


def test_largest_component_in_the_foreground_box_equals_the_whole_volume():
    from pacsnode.inference.postprocessing import keep_largest_component

    rng = np.random.default_rng(4)
    labels = np.zeros((30, 40, 50), np.uint8)
    labels[5:20, 8:30, 10:40] = rng.integers(0, 4, (15, 22, 30)) * (rng.random((15, 22, 30)) < 0.3)
    expected = labels.copy()
    full = np.ones((3, 3, 3), bool)
    for value in (1, 2, 3):  # the rule on the whole grid, written out
        comp, n = ndimage.label(expected == value, structure=full)
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        expected[(expected == value) & (comp != int(np.argmax(sizes)))] = 0
    got = labels.copy()
    assert keep_largest_component(got, (1, 2, 3)) is got
    np.testing.assert_array_equal(got, expected)
    assert (got != labels).any()  # small components were removed
    empty = np.zeros((4, 4, 4), np.uint8)
    assert keep_largest_component(empty, (1,)).sum() == 0
