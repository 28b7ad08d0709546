"""pacsnode.inference.run end to end: DICOM series → known model → labels on the source grid."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_models import make_card, rounding_model, sum_model, threshold_model
from test_volume import affine_for, sphere_array, write

from distillation.phantoms.dicom import StudyInfo
from pacsnode.errors import InferenceError, VolumeError
from pacsnode.inference import Model, run
from pacsnode.volume import read_series, select_series

CT_IDENTITY_50 = [{"scheme": "ct", "clip": [-1e6, 1e6], "mean": 50.0, "std": 1.0}]


def _model(tmp, **card_kw):
    card = make_card(1, 1, normalization=CT_IDENTITY_50, **card_kw)
    path = tmp / "m.onnx"
    threshold_model(path, card)
    return Model.load(path, threads=1)


@pytest.mark.parametrize("orientation", ["axial", "sagittal", "coronal", "oblique"])
@pytest.mark.parametrize("flip", [False, True])
def test_sphere_lands_on_the_same_voxels_in_every_orientation(tmp_path, orientation, flip):
    aff = affine_for(orientation, spacing=(2.0, 1.0, 1.0), flip=flip)
    arr = sphere_array(aff)
    write(tmp_path, "T1", arr, aff)
    vol = read_series(tmp_path / "T1")
    model = _model(tmp_path, target_spacing=(2.0, 1.0, 1.0), patch_size=(8, 8, 8), crop_to_nonzero=True)
    pred = run(model, [vol])
    truth = sphere_array(vol.affine) > 0
    assert pred.labels.dtype == np.uint8 and pred.labels.shape == vol.shape
    np.testing.assert_array_equal(pred.labels, truth.astype(np.uint8))
    assert truth.sum() > 20
    assert set(pred.timings) == {"align", "preprocess", "network", "resample_back", "postprocess"}


def test_resampled_prediction_stays_in_place(tmp_path):
    aff = affine_for("oblique", spacing=(1.0, 1.0, 1.0), shape=(20, 20, 20))
    arr = sphere_array(aff, shape=(20, 20, 20), center=(0, 2, 4), radius=6.2)
    write(tmp_path, "T1", arr, aff)
    vol = read_series(tmp_path / "T1")
    model = _model(tmp_path, target_spacing=(2.0, 1.5, 1.5), patch_size=(8, 8, 8), crop_to_nonzero=False)
    pred = run(model, [vol], return_probabilities=True)
    truth = arr > 0
    dice = 2 * (pred.labels.astype(bool) & truth).sum() / (pred.labels.sum() + truth.sum())
    assert dice > 0.9
    assert pred.probabilities.shape == (2, 20, 20, 20) and pred.probabilities.dtype == np.float32
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pred.probabilities.argmax(0), pred.labels)
    np.testing.assert_array_equal(run(model, [vol]).labels, pred.labels)


def test_many_classes_and_anisotropic_target(tmp_path):
    aff = affine_for("axial", spacing=(1.0, 1.0, 1.0), shape=(12, 16, 16))
    arr = np.zeros((12, 16, 16), np.float32)
    arr[2:10, 3:13, 3:13] = 1
    arr[2:10, 5:11, 5:11] = 2  # constant along z: the 4 mm axis (order 0 there) cannot blur it
    arr[2:10, 7:9, 7:9] = 3
    write(tmp_path, "T1", arr, aff)
    vol = read_series(tmp_path / "T1")
    card = make_card(1, 3, normalization=[{"scheme": "none"}], target_spacing=(4.0, 1.0, 1.0),
                     patch_size=(4, 8, 8), crop_to_nonzero=True)
    rounding_model(tmp_path / "r.onnx", card, classes=4)
    pred = run(Model.load(tmp_path / "r.onnx", threads=1), [vol])
    assert set(np.unique(pred.labels)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(pred.labels, arr)


def test_largest_component_postprocessing(tmp_path):
    aff = affine_for("axial", spacing=(1.0, 1.0, 1.0))
    arr = np.zeros((10, 12, 12), np.float32)
    arr[1:5, 1:5, 1:5] = 100
    arr[7:9, 8:10, 8:10] = 100
    write(tmp_path, "T1", arr, aff)
    vol = read_series(tmp_path / "T1")
    plain = run(_model(tmp_path, patch_size=(8, 8, 8)), [vol])
    assert plain.labels.sum() == 64 + 8
    pp = run(_model(tmp_path, patch_size=(8, 8, 8), postprocessing={"largest_component": [1]}), [vol])
    assert pp.labels.sum() == 64 and pp.labels[1:5, 1:5, 1:5].all()


def test_multi_series_model_uses_every_channel_in_the_reference_grid(tmp_path):
    study = StudyInfo.synthetic(5, "brain")
    ref_aff = affine_for("axial", spacing=(1.0, 1.0, 1.0), origin=(-7.0, -8.0, -6.0))
    other_aff = affine_for("sagittal", spacing=(1.0, 1.0, 1.0), origin=(8.0, -9.0, 7.0))
    half = sphere_array(ref_aff, shape=(12, 12, 12), center=(-1, -2, -3), radius=4.5, value=30)
    write(tmp_path / "study", "T1", half, ref_aff, study=study, series_number=1)
    write(tmp_path / "study", "T2", sphere_array(other_aff, shape=(18, 18, 18), center=(-1, -2, -3), radius=4.5,
                                                 value=30), other_aff, study=study, series_number=2)
    card = make_card(2, 1, names=["T1", "T2"], normalization=[{"scheme": "none"}] * 2, patch_size=(8, 8, 8))
    sum_model(tmp_path / "s.onnx", card, channels=2, threshold=45.0)  # only where both are 30
    model = Model.load(tmp_path / "s.onnx", threads=1)
    chosen = select_series(tmp_path / "study", model.card.inputs)
    vols = [read_series(chosen[c.name].files) for c in model.card.inputs]
    pred = run(model, vols)
    assert pred.labels.shape == vols[0].shape
    np.testing.assert_array_equal(pred.labels, (half > 0).astype(np.uint8))
    with pytest.raises(InferenceError, match=r"needs one volume per input channel \(T1, T2\), got 1"):
        run(model, vols[:1])


def test_multi_series_model_names_the_missing_series(tmp_path):
    study = StudyInfo.synthetic(6, "brain")
    aff = affine_for("axial")
    for n, name in enumerate(["T1", "T1ce", "FLAIR"]):
        write(tmp_path / "study", name, sphere_array(aff), aff, study=study, series_number=n + 1)
    card = make_card(4, 1, normalization=[{"scheme": "zscore", "use_nonzero_mask": True}] * 4)
    sum_model(tmp_path / "s.onnx", card, channels=4)
    model = Model.load(tmp_path / "s.onnx", threads=1)
    with pytest.raises(VolumeError, match=r"got no series for T2 \(Modality MR, SeriesDescription matching '\^T2\$'\)"):
        select_series(tmp_path / "study", model.card.inputs)
