"""`pacsnode infer` and `pacsnode model info|check` through the command line entry point."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from onnx_models import make_card, threshold_model
from test_volume import affine_for, sphere_array, write

from distillation.phantoms.dicom import StudyInfo
from pacsnode.cli import main

NORM = [{"scheme": "ct", "clip": [-1e6, 1e6], "mean": 50.0, "std": 1.0}]


def test_infer_writes_nifti_in_ras_with_timings(tmp_path, capsys):
    center = np.array([-1.3, -1.1, -0.4])
    aff = affine_for("oblique", spacing=(2.0, 1.0, 1.0), flip=True)
    write(tmp_path, "T1", sphere_array(aff, center=center), aff)
    threshold_model(tmp_path / "m.onnx", make_card(1, 1, normalization=NORM, target_spacing=(2.0, 1.0, 1.0),
                                                   patch_size=(8, 8, 8)))
    rc = main(["infer", str(tmp_path / "T1"), "--model", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "out"),
               "--threads", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "timings  load model" in out and "network" in out and "resample_back" in out
    files = list((tmp_path / "out").glob("*_labels.nii.gz"))
    assert len(files) == 1
    img = nib.load(files[0])
    data = np.asarray(img.dataobj)
    assert data.dtype == np.uint8 and data.shape == (12, 14, 10)
    ijk = np.argwhere(data > 0)
    ras = ijk @ img.affine[:3, :3].T + img.affine[:3, 3]
    lps = ras * [-1, -1, 1]
    assert np.linalg.norm(lps - center, axis=1).max() < 4.3
    np.testing.assert_allclose(lps.mean(0), center, atol=0.5)


def test_infer_names_the_missing_series(tmp_path, capsys):
    study = StudyInfo.synthetic(9, "brain")
    aff = affine_for("axial")
    for n, name in enumerate(["T1", "T2", "FLAIR"]):
        write(tmp_path / "study", name, sphere_array(aff), aff, study=study, series_number=n + 1)
    threshold_model(tmp_path / "m.onnx", make_card(4, 1, normalization=NORM * 4), channels=4)
    rc = main(["infer", str(tmp_path / "study"), "--model", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "o"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "got no series for T1ce (Modality MR, SeriesDescription matching '^T1ce$')" in err


def test_model_info_and_check(tmp_path, capsys):
    threshold_model(tmp_path / "m.onnx", make_card(1, 1, postprocessing={"largest_component": [1]}))
    assert main(["model", "info", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "test-model 0.0.1" in out and "Edema" in out and "SCT 79654002" in out
    assert "largest component of [1]" in out
    assert main(["model", "check", str(tmp_path / "m.onnx")]) == 0
    assert "valid model test-model 0.0.1" in capsys.readouterr().out


def test_model_check_fails_with_exit_2(tmp_path, capsys):
    card = make_card(1, 1)
    card["activation"] = "tanh"
    threshold_model(tmp_path / "bad.onnx", json.dumps(card))
    assert main(["model", "check", str(tmp_path / "bad.onnx")]) == 2
    err = capsys.readouterr().err
    assert "model card field activation must name an output activation, got 'tanh'; valid: softmax, sigmoid" in err


def test_infer_seg_writes_a_seg_aligned_with_the_source_and_an_sr(tmp_path, capsys):
    import highdicom as hd
    import pydicom

    from pacsnode.volume import read_series

    aff = affine_for("sagittal", spacing=(2.0, 1.0, 1.0), flip=True)
    write(tmp_path, "T1", sphere_array(aff, center=np.array([-1.3, -1.1, -0.4])), aff)
    threshold_model(tmp_path / "m.onnx", make_card(1, 1, normalization=NORM, target_spacing=(2.0, 1.0, 1.0),
                                                   patch_size=(8, 8, 8)))
    rc = main(["infer", str(tmp_path / "T1"), "--model", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "out"),
               "--threads", "1", "--no-progress", "--seg"])
    assert rc == 0, capsys.readouterr().err
    [seg_file] = (tmp_path / "out").glob("*_seg.dcm")
    [sr_file] = (tmp_path / "out").glob("*_sr.dcm")
    labels = np.asarray(nib.load(next((tmp_path / "out").glob("*_labels.nii.gz"))).dataobj).transpose(2, 1, 0)
    source = read_series(tmp_path / "T1")
    seg = hd.seg.segread(seg_file)
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in source.datasets], combine_segments=True)
    assert labels.sum() > 0
    np.testing.assert_array_equal(got, labels)
    assert pydicom.dcmread(sr_file).Modality == "SR"
