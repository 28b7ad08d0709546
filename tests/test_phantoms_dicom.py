"""Phantom DICOM studies read back (pydicom, dcm2niix, pacsnode's reader) give the NIfTI's voxels and geometry."""

from __future__ import annotations

import importlib.util
import subprocess
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from distillation.phantoms import generate_brain_case, generate_ct_case
from distillation.phantoms.dicom import StudyInfo, read_back, write_series, write_study
from distillation.phantoms.nnunet_raw import from_nifti, write_case
from distillation.phantoms.orientation import reorient, reorient_case

DCM2NIIX = Path("/usr/bin/dcm2niix")
DCIODVFY = Path("/usr/bin/dciodvfy")
DCMDJPLS = Path("/usr/bin/dcmdjpls")
DCMDRLE = Path("/usr/bin/dcmdrle")
HAVE_PACSNODE_READER = importlib.util.find_spec("pacsnode.volume") is not None

# Readers of a written series: each returns (array [k, i, j], LPS affine).
READERS = [
    "pydicom",
    "dcm2niix",
    # pacsnode's own reader (engineer C): skipped only while pacsnode.volume does not exist
    pytest.param("pacsnode", marks=pytest.mark.skipif(
        not HAVE_PACSNODE_READER, reason="pacsnode.volume.read_series not committed yet")),
]


def read_with(reader: str, paths: list[Path], tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    if reader == "pydicom":
        return read_back(paths)
    if reader == "pacsnode":
        from pacsnode.volume import read_series

        volume = read_series(paths)
        return volume.array, volume.affine
    out = tmp / "dcm2niix"
    out.mkdir(parents=True, exist_ok=True)
    source = paths[0].parent
    head = pydicom.dcmread(paths[0], stop_before_pixels=True)
    syntax = head.file_meta.TransferSyntaxUID
    multiframe = int(head.get("NumberOfFrames", 1)) > 1
    # Debian's dcm2niix has no JPEG-LS decoder and refuses compressed multi-frame files with
    # many fragments: decode those with DCMTK first (another real peer reading our files)
    decoder = {pydicom.uid.JPEGLSLossless: DCMDJPLS,
               pydicom.uid.RLELossless: DCMDRLE if multiframe else None}.get(syntax)
    if decoder is not None:
        source = tmp / "decoded"
        source.mkdir(parents=True, exist_ok=True)
        for path in paths:
            subprocess.run([str(decoder), str(path), str(source / path.name)], check=True, capture_output=True)
    subprocess.run([str(DCM2NIIX), "-z", "n", "-b", "n", "-f", "%s", "-o", str(out), str(source)],
                   check=True, capture_output=True)
    (nii,) = sorted(out.glob("*.nii"))
    img = nib.load(nii)
    # dcm2niix's array is (x, y, z) in RAS: bring it to [k, i, j] with an LPS affine
    return img.get_fdata().transpose(2, 1, 0), np.diag([-1.0, -1, 1, 1]) @ img.affine @ np.array(
        [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def align(array: np.ndarray, affine: np.ndarray, ref_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip ``array`` onto the reference grid's axes (readers may order axes their own way)."""
    m = np.linalg.inv(ref_affine) @ affine          # index in array → index in reference
    out, new = array, affine.copy()
    axes = [int(np.argmax(np.abs(m[:3, a]))) for a in range(3)]
    assert sorted(axes) == [0, 1, 2], f"not a permutation of the reference axes: {m.round(3)}"
    perm = [axes.index(r) for r in range(3)]
    out = np.transpose(out, perm)
    new = new[:, perm + [3]]
    for r in range(3):
        if (np.linalg.inv(ref_affine) @ new)[r, r] < 0:
            n = out.shape[r]
            out = np.flip(out, axis=r)
            new[:3, 3] += new[:3, r] * (n - 1)
            new[:3, r] = -new[:3, r]
    return out, new


@pytest.fixture(scope="module")
def brain():
    case = generate_brain_case(11, spacing=3.0)
    return case


@pytest.fixture(scope="module")
def crop(brain):
    """A 36x40x40 block around the tumor: small enough for the many orientation variants."""
    k, i, j = (min(max(c - 18, 0), n - 40) for c, n in zip(brain.meta["tumor_centre_index"], brain.labels.shape, strict=True))
    box = (slice(k, k + 36), slice(i, i + 40), slice(j, j + 40))
    affine = brain.affine_lps.copy()
    affine[:3, 3] = (brain.affine_lps @ np.array([k, i, j, 1.0]))[:3]
    return replace(brain, images={n: a[box].copy() for n, a in brain.images.items()},
                   labels=brain.labels[box].copy(), affine_lps=affine)


@pytest.fixture(scope="module")
def study(brain, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    written = write_study(brain, root / "dicom")
    write_case(brain, root / "nnunet", "case_0000")
    return root, written


@pytest.mark.parametrize("reader", READERS)
def test_study_reads_back_as_the_nifti(study, brain, reader, tmp_path):
    root, written = study
    for c, channel in enumerate(["T1", "T1ce", "T2", "FLAIR"]):
        nifti, nifti_affine = from_nifti(root / "nnunet" / "imagesTr" / f"case_0000_{c:04d}.nii.gz")
        array, affine = read_with(reader, written[channel], tmp_path / channel)
        array, affine = align(array, affine, nifti_affine)
        assert np.allclose(affine, nifti_affine, atol=1e-3), (reader, channel)
        assert np.array_equal(array, nifti), (reader, channel)
        if reader == "dcm2niix":
            break  # one channel is enough for the external converter


def test_study_headers_are_one_synthetic_study(study):
    _, written = study
    heads = {ch: pydicom.dcmread(paths[0], stop_before_pixels=True) for ch, paths in written.items()}
    assert [h.SeriesDescription for h in heads.values()] == ["T1", "T1ce", "T2", "FLAIR"]
    assert len({h.StudyInstanceUID for h in heads.values()}) == 1
    assert len({h.FrameOfReferenceUID for h in heads.values()}) == 1
    assert len({h.SeriesInstanceUID for h in heads.values()}) == 4
    first = heads["T1"]
    assert str(first.PatientName).startswith("PHANTOM^") and first.PatientID.startswith("SYN-")
    assert first.Modality == "MR" and first.SOPClassUID == pydicom.uid.MRImageStorage
    assert heads["T1ce"].ContrastBolusAgent and "ContrastBolusAgent" not in heads["T1"]
    assert float(first.WindowWidth) > 0 and first.PixelSpacing == [3, 3]
    assert [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in written["T1"][:3]] == [1, 2, 3]


def test_files_are_deterministic(crop, tmp_path):
    a = write_study(crop, tmp_path / "a", transfer_syntax="rle")
    b = write_study(crop, tmp_path / "b", transfer_syntax="rle")
    for channel in a:
        for pa, pb in zip(a[channel], b[channel], strict=True):
            da, db = pydicom.dcmread(pa), pydicom.dcmread(pb)
            assert da.PixelData == db.PixelData and da.SOPInstanceUID == db.SOPInstanceUID
    other = write_study(replace(crop, seed=crop.seed + 1), tmp_path / "c")
    assert pydicom.dcmread(other["T1"][0]).StudyInstanceUID != pydicom.dcmread(a["T1"][0]).StudyInstanceUID


def test_each_seed_and_acquisition_is_a_study_of_its_own(crop, tmp_path):
    """Two phantom studies sent to one PACS must never merge (issue 25)."""
    def uids(case, name, **kw):
        head = pydicom.dcmread(write_study(case, tmp_path / name, **kw)["T1"][0], stop_before_pixels=True)
        return head.StudyInstanceUID, head.FrameOfReferenceUID

    t1_only = replace(crop, images={"T1": crop.images["T1"]})
    plain = uids(t1_only, "plain")
    assert plain == (StudyInfo.synthetic(crop.seed, crop.kind).study_instance_uid,
                     StudyInfo.synthetic(crop.seed, crop.kind).frame_of_reference_uid)
    assert uids(t1_only, "axial", orientation="axial") == plain
    variants = [uids(t1_only, "sag", orientation="sagittal"), uids(t1_only, "cor", orientation="coronal"),
                uids(t1_only, "flip", orientation="axial", flip_slices=True),
                uids(t1_only, "enh", enhanced=True), uids(t1_only, "rle", transfer_syntax="rle"),
                uids(replace(t1_only, seed=crop.seed + 1), "seed", orientation="sagittal")]
    studies = [plain[0], *(v[0] for v in variants)]
    frames = [plain[1], *(v[1] for v in variants)]
    assert len(set(studies)) == len(studies) and len(set(frames)) == len(frames)
    assert uids(t1_only, "sag-again", orientation="sagittal") == variants[0]  # still deterministic


@pytest.mark.parametrize("orientation", ["axial", "sagittal", "coronal", "oblique"])
@pytest.mark.parametrize("flip", [False, True], ids=["normal", "flipped"])
@pytest.mark.parametrize("reader", ["pydicom", READERS[2]])
def test_any_orientation_keeps_voxels_and_truth(crop, orientation, flip, reader, tmp_path):
    moved = reorient_case(crop, orientation, flip)
    paths = write_series(crop.images["FLAIR"], crop.affine_lps, tmp_path, modality="MR",
                         series_description="FLAIR", orientation=orientation, flip_slices=flip)
    array, affine = read_with(reader, paths, tmp_path)
    array, affine = align(array, affine, moved.affine_lps)
    assert np.allclose(affine, moved.affine_lps, atol=1e-3)
    tol = 0.0 if orientation != "oblique" else 0.5   # oblique images are resampled, then quantised
    assert np.abs(array - moved.images["FLAIR"]).max() <= tol
    assert set(np.unique(moved.labels)) == {0, 1, 2, 3}
    head = pydicom.dcmread(paths[0], stop_before_pixels=True)
    normal = np.cross(np.asarray(head.ImageOrientationPatient[:3], float),
                      np.asarray(head.ImageOrientationPatient[3:], float))
    dominant = {"axial": 2, "sagittal": 0, "coronal": 1}.get(orientation)
    if dominant is not None:
        assert abs(normal[dominant]) == pytest.approx(1.0)
    else:
        assert np.abs(normal).max() < 0.99
    if orientation != "oblique":  # exact permutations: labels move with the voxels
        labels, _ = reorient(crop.labels, crop.affine_lps, orientation, flip)
        assert np.array_equal(labels, moved.labels)


VARIANTS = [(False, "rle"), (False, "jpegls"), (False, "j2k"), (True, None), (True, "rle"), (True, "jpegls"), (True, "j2k")]


@pytest.mark.parametrize(("enhanced", "syntax"), VARIANTS, ids=[f"{'enh' if e else 'classic'}-{s}" for e, s in VARIANTS])
@pytest.mark.parametrize("reader", READERS)
def test_enhanced_and_compressed_series_read_back(crop, enhanced, syntax, reader, tmp_path):
    if reader == "dcm2niix" and enhanced and syntax == "j2k":
        pytest.skip("Debian's dcm2niix refuses multi-frame JPEG 2000 with a fragment per frame, "
                    "and DCMTK has no free JPEG 2000 decoder to convert it first")
    paths = write_series(crop.images["T1ce"], crop.affine_lps, tmp_path / "s", modality="MR",
                         series_description="T1ce", enhanced=enhanced, transfer_syntax=syntax)
    assert len(paths) == (1 if enhanced else crop.labels.shape[0])
    ds = pydicom.dcmread(paths[0])
    if enhanced:
        assert ds.SOPClassUID == pydicom.uid.EnhancedMRImageStorage and int(ds.NumberOfFrames) == 36
        assert "PixelMeasuresSequence" in ds.SharedFunctionalGroupsSequence[0]
        assert "DimensionIndexValues" in ds.PerFrameFunctionalGroupsSequence[0].FrameContentSequence[0]
    if syntax:
        assert ds.file_meta.TransferSyntaxUID.is_compressed
    array, affine = align(*read_with(reader, paths, tmp_path), crop.affine_lps)
    assert np.allclose(affine, crop.affine_lps, atol=1e-3)
    assert np.array_equal(array, crop.images["T1ce"])


@pytest.mark.parametrize("enhanced", [False, True], ids=["classic", "enhanced"])
@pytest.mark.parametrize("reader", READERS)
def test_ct_reads_back_in_hounsfield_units(enhanced, reader, tmp_path):
    case = generate_ct_case(5, spacing=6.0)
    written = write_study(case, tmp_path / "ct", enhanced=enhanced, transfer_syntax="rle")
    assert list(written) == ["CT ABDOMEN"]
    ds = pydicom.dcmread(written["CT ABDOMEN"][0])
    assert ds.Modality == "CT" and ds.SeriesDescription == "CT ABDOMEN"
    assert ds.PixelRepresentation == 1 and ds.pixel_array.dtype == np.int16
    if not enhanced:
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        assert ds.ImageType == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert float(ds.WindowCenter[0]) == 40 and float(ds.WindowWidth[0]) == 400
    array, affine = align(*read_with(reader, written["CT ABDOMEN"], tmp_path), case.affine_lps)
    assert np.array_equal(array, case.images["CT ABDOMEN"])
    assert np.allclose(affine, case.affine_lps, atol=1e-3)


@pytest.mark.parametrize(("modality", "enhanced"), [("MR", False), ("MR", True), ("CT", False), ("CT", True)])
def test_dciodvfy_finds_no_errors(modality, enhanced, tmp_path):
    array = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    paths = write_series(array, np.diag([2.0, 1.0, 1.0, 1.0])[:, [2, 1, 0, 3]], tmp_path, modality=modality,
                         series_description="T1" if modality == "MR" else "CT ABDOMEN", enhanced=enhanced,
                         study=StudyInfo.synthetic(1, "brain" if modality == "MR" else "ct"),
                         extra={"RepetitionTime": 500.0, "EchoTime": 10.0} if modality == "MR" else None)
    result = subprocess.run([str(DCIODVFY), str(paths[0])], capture_output=True, text=True)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_bad_geometry_and_options_are_refused(tmp_path):
    array = np.zeros((4, 8, 8), dtype=np.float32)
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(ValueError, match=r"affine must have orthogonal axes \(no shear\)"):
        write_series(array, sheared, tmp_path, modality="MR", series_description="T1")
    with pytest.raises(ValueError, match=r"transfer_syntax must be one of explicit"):
        write_series(array, np.eye(4), tmp_path, modality="MR", series_description="T1", transfer_syntax="zip")
    with pytest.raises(ValueError, match=r"modality must be CT or MR, got 'PT'"):
        write_series(array, np.eye(4), tmp_path, modality="PT", series_description="T1")
    with pytest.raises(ValueError, match=r"orientation must be one of axial, sagittal, coronal, oblique"):
        reorient(array, np.eye(4), "tilted")
