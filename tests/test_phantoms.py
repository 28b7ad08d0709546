"""Phantom generators, the nnU-Net raw writer and `distill phantoms`: behaviour through the public API."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from distillation.cli import main as distill
from distillation.phantoms import generate_brain_case, generate_ct_case
from distillation.phantoms.fields import parse_spacing
from distillation.phantoms.nnunet_raw import from_nifti, nifti_affine, write_nnunet_dataset


@pytest.fixture(scope="module")
def brain():
    return generate_brain_case(7)


@pytest.fixture(scope="module")
def ct():
    return generate_ct_case(3, spacing=(4.0, 4.0, 4.0), lesion_probability=1.0)


def test_phantoms_package_never_imports_torch():
    code = ("import sys, distillation.phantoms as p; p.generate_brain_case(0, 4); p.generate_ct_case(0, 6); "
            "from distillation.phantoms import dicom, nnunet_raw, orientation; import distillation.cli.phantoms; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_brain_case_follows_the_contract(brain):
    assert list(brain.images) == ["T1", "T1ce", "T2", "FLAIR"]
    assert brain.spacing == (2.0, 2.0, 2.0)
    assert brain.labels.dtype == np.uint8 and set(np.unique(brain.labels)) == {0, 1, 2, 3}
    for image in brain.images.values():
        assert image.dtype == np.float32 and image.shape == brain.labels.shape
        assert np.array_equal(image, np.rint(image)) and image.min() >= 0
    # axial layout: k → superior, i → posterior, j → left, 2 mm each
    assert np.allclose(brain.affine_lps[:3, :3], [[0, 0, 2], [0, 2, 0], [2, 0, 0]])
    assert (brain.images["T1"][brain.labels > 0] > 0).all(), "tumor outside the brain mask"


def test_same_seed_same_case_and_different_seed_differs(brain):
    again = generate_brain_case(7)
    other = generate_brain_case(8)
    assert np.array_equal(again.labels, brain.labels)
    for name in brain.images:
        assert np.array_equal(again.images[name], brain.images[name])
        assert not np.array_equal(other.images[name], brain.images[name])
    assert not np.array_equal(other.labels, brain.labels)


def test_labels_match_the_contrasts(brain):
    img, lab = brain.images, brain.labels
    normal = (lab == 0) & (img["T1"] > 0)
    enhancing, edema = lab == 3, lab == 1

    def ratio(name, mask):
        return float(np.median(img[name][mask]) / np.median(img[name][normal]))

    # enhancement only in T1ce: the rim is bright after contrast, not before
    assert ratio("T1ce", enhancing) > 1.4
    assert ratio("T1", enhancing) < 1.0
    assert ratio("T1ce", enhancing) > 1.6 * ratio("T1", enhancing)
    # edema bright in T2 and FLAIR
    assert ratio("FLAIR", edema) > 1.3
    assert ratio("T2", edema) > 1.2


def test_every_subregion_present_and_sizes_spread_over_the_range():
    radii = []
    for seed in range(20):
        case = generate_brain_case(100 + seed, spacing=3.0, tumor_radius_mm=(3.0, 35.0))
        counts = np.bincount(case.labels.ravel(), minlength=4)
        assert (counts[1:] > 0).all(), f"seed {100 + seed}: sub-region missing, voxel counts {counts}"
        volume = counts[1:].sum() * 27.0
        radii.append((3 * volume / (4 * math.pi)) ** (1 / 3))
    radii = np.array(radii)
    assert radii.min() < 10.0 and radii.max() > 22.0, radii.round(1)
    occupied = np.histogram(np.log(radii), bins=4, range=(np.log(3.0), np.log(45.0)))[0]
    assert (occupied > 0).sum() >= 3, radii.round(1)


def test_spacing_options_give_the_matching_grid():
    case = generate_brain_case(1, spacing="4,3,3")
    assert case.spacing == (4.0, 3.0, 3.0)
    assert np.allclose(np.linalg.norm(case.affine_lps[:3, :3], axis=0), [4, 3, 3])
    assert case.labels.shape == (40, 64, 51)


@pytest.mark.parametrize("value", ["0", "1,2", "a,b,c", -2.0])
def test_bad_spacing_is_refused_with_the_rule(value):
    with pytest.raises(ValueError, match=r"spacing must be one or three numbers of millimetres"):
        parse_spacing(value)


def test_ct_is_in_hounsfield_units_with_organ_labels(ct):
    hu, lab = ct.images["CT ABDOMEN"], ct.labels
    assert ct.modality == "CT" and list(ct.images) == ["CT ABDOMEN"]
    assert set(np.unique(lab)) == {0, 1, 2, 3, 4, 5}
    assert hu.min() >= -1024 and np.median(hu[:, :3, :3]) < -950, "air outside the body"
    for value in (1, 2, 3, 4):
        assert 60 < np.median(hu[lab == value]) < 240, value
    assert abs(np.median(hu[lab == 5]) - np.median(hu[lab == 1])) > 25, "lesion not visible"
    assert (hu > 400).sum() > 50, "no bone"
    # the right kidney lies on the patient's right (negative LPS x)
    for value, sign in ((3, -1), (4, 1), (1, -1), (2, 1)):
        j = np.argwhere(lab == value)[:, 2].mean()
        x = ct.affine_lps[0, 2] * j + ct.affine_lps[0, 3]
        assert np.sign(x) == sign, value


def test_ct_is_deterministic(ct):
    again = generate_ct_case(3, spacing=(4.0, 4.0, 4.0), lesion_probability=1.0)
    assert np.array_equal(again.images["CT ABDOMEN"], ct.images["CT ABDOMEN"])
    assert np.array_equal(again.labels, ct.labels)


def test_nnunet_dataset_layout_and_nifti_convention(tmp_path, brain):
    small = generate_brain_case(2, spacing=4.0)
    folder = write_nnunet_dataset([brain, small], tmp_path, 7, "Phantom", test_cases=[small])
    assert folder.name == "Dataset007_Phantom"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert meta["labels"] == {"background": 0, "edema": 1, "necrotic_core": 2, "enhancing_tumor": 3}
    assert meta["numTraining"] == 2 == len(list((folder / "labelsTr").glob("*.nii.gz")))
    assert meta["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == [f"case_0002_000{c}.nii.gz" for c in range(4)]
    assert len(list((folder / "imagesTr").glob("case_0000_*.nii.gz"))) == len(meta["channel_names"])
    img = nib.load(folder / "imagesTr" / "case_0000_0001.nii.gz")
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert np.array_equal(np.asarray(img.dataobj), brain.images["T1ce"].transpose(2, 1, 0))
    assert np.allclose(img.affine, nifti_affine(brain.affine_lps))
    labels, affine = from_nifti(folder / "labelsTr" / "case_0000.nii.gz")
    assert labels.dtype == np.uint8 and np.array_equal(labels, brain.labels)
    assert np.allclose(affine, brain.affine_lps)


def test_nnunet_dataset_refuses_bad_ids(tmp_path, brain):
    with pytest.raises(ValueError, match=r"dataset_id must be an integer in 1..999, got 1000"):
        write_nnunet_dataset([brain], tmp_path, 1000, "Phantom")


def test_cli_cases_do_not_depend_on_the_number_asked_for(tmp_path, capsys):
    assert distill(["phantoms", "ct", "--cases", "1", "--out", str(tmp_path / "a"), "--spacing", "6"]) == 0
    assert distill(["phantoms", "ct", "--cases", "2", "--test-cases", "1", "--out", str(tmp_path / "b"),
                    "--spacing", "6", "--dataset-id", "9", "--name", "Abd"]) == 0
    a = tmp_path / "a" / "Dataset502_AbdomenCTPhantom"
    b = tmp_path / "b" / "Dataset009_Abd"
    for sub in ("imagesTr/case_0000_0000.nii.gz", "labelsTr/case_0000.nii.gz"):
        assert np.array_equal(nib.load(a / sub).get_fdata(), nib.load(b / sub).get_fdata())
    meta = json.loads((b / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["channel_names"] == {"0": "CT"}
    assert (b / "labelsTs" / "case_0002.nii.gz").exists()


def test_cli_refuses_dicom_options_without_dicom(tmp_path, capsys):
    assert distill(["phantoms", "brain", "--cases", "1", "--out", str(tmp_path), "--enhanced"]) == 2
    assert "--enhanced and --compress apply to DICOM: add --dicom" in capsys.readouterr().err


def test_cli_tumor_radius_bounds_the_lesions(tmp_path):
    assert distill(["phantoms", "brain", "--cases", "2", "--out", str(tmp_path), "--spacing", "4",
                    "--tumor-radius", "12,14"]) == 0
    for i in range(2):
        labels = nib.load(tmp_path / "Dataset501_BrainTumorPhantom" / "labelsTr" / f"case_{i:04d}.nii.gz")
        whole_mm3 = float((np.asarray(labels.dataobj) > 0).sum()) * 4.0**3
        # an irregular, white-matter-shaped edema of radius 12-14 mm: far above a 2.5 mm lesion
        assert whole_mm3 > 1000.0


@pytest.mark.parametrize("value", ["8", "9,3", "0,10", "a,b"])
def test_cli_refuses_bad_tumor_radius(tmp_path, capsys, value):
    assert distill(["phantoms", "brain", "--cases", "1", "--out", str(tmp_path), "--tumor-radius", value]) == 2
    assert "--tumor-radius must be LO,HI" in capsys.readouterr().err


def test_cli_tumor_radius_is_brain_only(tmp_path, capsys):
    assert distill(["phantoms", "ct", "--cases", "1", "--out", str(tmp_path), "--tumor-radius", "8,35"]) == 2
    assert "--tumor-radius applies to brain phantoms" in capsys.readouterr().err
