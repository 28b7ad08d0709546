"""pacsnode.volume: DICOM series → Volume, geometry checks, channel selection, resampling."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from distillation.phantoms.dicom import StudyInfo, write_series
from pacsnode.errors import VolumeError
from pacsnode.volume import read_series, resample_to_reference, scan_series, select_series

SHAPE = (10, 14, 12)


def rotation(ax: float, az: float) -> np.ndarray:
    a, b = np.radians(ax), np.radians(az)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def affine_for(orientation: str, spacing=(2.0, 1.0, 1.0), flip: bool = False, origin=None, shape=SHAPE,
               center=(-1.0, -1.5, 0.5)):
    """Columns: k direction, i (column cosine), j (row cosine); k along +-normal.

    Without ``origin`` the grid of ``shape`` is centred on ``center`` (LPS mm).
    """
    row, col = {
        "axial": ((1, 0, 0), (0, 1, 0)),
        "sagittal": ((0, 1, 0), (0, 0, -1)),
        "coronal": ((1, 0, 0), (0, 0, -1)),
        "oblique": (tuple(rotation(20, 15) @ [1, 0, 0]), tuple(rotation(20, 15) @ [0, 1, 0])),
    }[orientation]
    row, col = np.array(row, float), np.array(col, float)
    normal = np.cross(row, col) * (-1 if flip else 1)
    a = np.eye(4)
    a[:3, 0] = normal * spacing[0]
    a[:3, 1] = col * spacing[1]
    a[:3, 2] = row * spacing[2]
    if origin is None:
        origin = np.asarray(center) - a[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    a[:3, 3] = origin
    return a


def sphere_array(affine: np.ndarray, shape=SHAPE, center=(-1.3, -1.1, -0.4), radius=4.3, value=100.0):
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    inside = np.linalg.norm(world - np.asarray(center), axis=1) < radius
    return (inside.reshape(shape) * value).astype(np.float32)


def write(tmp: Path, name: str, array, affine, **kw) -> list[Path]:
    kw.setdefault("modality", "MR")
    kw.setdefault("series_description", name)
    return write_series(array, affine, tmp / name, **kw)


def edit(path: Path, **attrs) -> None:
    ds = pydicom.dcmread(path)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path)


def _flat_case(tmp: Path, n: int = 8, name: str = "S") -> tuple[list[Path], np.ndarray]:
    aff = affine_for("axial", spacing=(2.0, 1.0, 1.0), origin=(-7.0, -8.0, -9.0))
    arr = np.arange(n * 6 * 5, dtype=np.float32).reshape(n, 6, 5) % 97
    return write(tmp, name, arr, aff), aff


# --------------------------------------------------------------------------- orientation
@pytest.mark.parametrize("orientation", ["axial", "sagittal", "coronal", "oblique"])
@pytest.mark.parametrize("flip", [False, True])
def test_any_orientation_reads_the_same_patient_voxels(tmp_path, orientation, flip):
    aff = affine_for(orientation, flip=flip)
    arr = sphere_array(aff)
    files = write(tmp_path, "S", arr, aff)
    shuffled = list(reversed(files))
    vol = read_series(shuffled)
    # slices sorted along the normal: k increases along row x column
    n = np.cross(vol.affine[:3, 2] / np.linalg.norm(vol.affine[:3, 2]),
                 vol.affine[:3, 1] / np.linalg.norm(vol.affine[:3, 1]))
    assert float(vol.affine[:3, 0] @ n) > 0
    assert vol.spacing == pytest.approx((2.0, 1.0, 1.0))
    expected = arr[::-1] if flip else arr
    np.testing.assert_array_equal(vol.array, expected)
    np.testing.assert_allclose(vol.array, sphere_array(vol.affine), atol=0)
    assert 100 < (arr > 0).sum() < arr.size / 2
    written_affine = aff.copy()
    if flip:
        written_affine[:3, 3] = aff[:3, :3] @ [SHAPE[0] - 1, 0, 0] + aff[:3, 3]
        written_affine[:3, 0] *= -1
    np.testing.assert_allclose(vol.affine, written_affine, atol=1e-6)
    assert [int(ds.InstanceNumber) for ds in vol.datasets] == (
        list(range(SHAPE[0], 0, -1)) if flip else list(range(1, SHAPE[0] + 1)))


# ------------------------------------------------------------------------------ contents
def test_ct_rescale_is_applied(tmp_path):
    aff = affine_for("axial")
    hu = (sphere_array(aff, value=1200.0) - 1000.0).astype(np.float32)
    files = write(tmp_path, "CT", hu, aff, modality="CT", rescale=(2.0, -1100.0))
    raw = pydicom.dcmread(files[3]).pixel_array
    assert not np.array_equal(raw, hu[3])
    vol = read_series(tmp_path / "CT")
    assert vol.modality == "CT" and vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, hu)


def test_enhanced_multiframe_matches_classic(tmp_path):
    aff = affine_for("oblique", flip=True)
    arr = sphere_array(aff)
    classic = read_series(write(tmp_path, "classic", arr, aff))
    enhanced = read_series(write(tmp_path, "enhanced", arr, aff, enhanced=True))
    assert len(enhanced.datasets) == 1
    assert [f for _, f in enhanced.frames] == list(range(SHAPE[0], 0, -1))
    np.testing.assert_array_equal(enhanced.array, classic.array)
    np.testing.assert_allclose(enhanced.affine, classic.affine, atol=1e-6)


@pytest.mark.parametrize("syntax", ["rle", "jpegls", "j2k"])
def test_compressed_series_is_decoded(tmp_path, syntax):
    aff = affine_for("axial")
    shape = (3, 32, 32)
    arr = sphere_array(aff, shape=shape, center=(8, 8, 2), radius=9, value=700)
    files = write(tmp_path, "C", arr, aff, transfer_syntax=syntax)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID.is_compressed
    vol = read_series(tmp_path / "C")
    np.testing.assert_array_equal(vol.array, arr)
    assert "PixelData" not in vol.datasets[0]


def test_volume_carries_uids(tmp_path):
    files, _ = _flat_case(tmp_path)
    ds = pydicom.dcmread(files[0])
    vol = read_series(tmp_path / "S")
    assert vol.series_instance_uid == ds.SeriesInstanceUID
    assert vol.study_instance_uid == ds.StudyInstanceUID
    assert vol.frame_of_reference_uid == ds.FrameOfReferenceUID
    assert vol.modality == "MR" and vol.series_description == "S"


# ------------------------------------------------------------------------ geometry errors
def test_missing_slice(tmp_path):
    files, _ = _flat_case(tmp_path)
    files[4].unlink()
    with pytest.raises(VolumeError, match=r"no missing slices, got 1 missing: a gap of 4 mm .* spacing is 2 mm"):
        read_series(tmp_path / "S")


def test_duplicate_position(tmp_path):
    files, _ = _flat_case(tmp_path)
    copy = files[0].with_name("dup.dcm")
    shutil.copy(files[2], copy)
    edit(copy, SOPInstanceUID=generate_uid())
    with pytest.raises(VolumeError, match=r"each slice position must occur once, got 1 duplicate"):
        read_series(tmp_path / "S")


def test_non_uniform_spacing(tmp_path):
    files, aff = _flat_case(tmp_path)
    p = aff @ [5, 0, 0, 1]
    edit(files[5], ImagePositionPatient=[float(p[0]), float(p[1]), float(p[2]) + 0.5])
    with pytest.raises(VolumeError, match=r"slice spacing must be uniform within 1%, got steps from 1.5 to 2.5 mm"):
        read_series(tmp_path / "S")


def test_non_uniform_spacing_tolerance_is_configurable(tmp_path):
    files, aff = _flat_case(tmp_path)
    p = aff @ [5, 0, 0, 1]
    edit(files[5], ImagePositionPatient=[float(p[0]), float(p[1]), float(p[2]) + 0.1])
    read_series(tmp_path / "S", spacing_tolerance=0.1)
    with pytest.raises(VolumeError, match="uniform within 1%"):
        read_series(tmp_path / "S")


def test_gantry_tilt(tmp_path):
    files, aff = _flat_case(tmp_path)
    for k, f in enumerate(files):
        p = aff @ [k, 0, 0, 1]
        edit(f, ImagePositionPatient=[float(p[0]), float(p[1]) + 0.35 * k, float(p[2])])
    with pytest.raises(VolumeError, match=r"no gantry tilt\), got a tilt of 9.9\d°.*at most 0.1° is valid"):
        read_series(tmp_path / "S")


def test_mixed_orientations(tmp_path):
    a = write(tmp_path, "A", np.ones((5, 6, 6), np.float32), affine_for("axial"))
    b = write(tmp_path, "B", np.ones((5, 6, 6), np.float32), affine_for("sagittal", origin=(30, 0, 0)))
    ds = pydicom.dcmread(a[0])
    for f in b:
        edit(f, SeriesInstanceUID=ds.SeriesInstanceUID, FrameOfReferenceUID=ds.FrameOfReferenceUID)
    with pytest.raises(VolumeError, match=r"share one ImageOrientationPatient, got 2 orientations"):
        read_series(a + b)


def test_mixed_matrix_sizes(tmp_path):
    a = write(tmp_path, "A", np.ones((5, 6, 6), np.float32), affine_for("axial", origin=(-7, -8, -9)))
    b = write(tmp_path, "B", np.ones((1, 8, 6), np.float32), affine_for("axial", origin=(-7, -8, 1)))
    ds = pydicom.dcmread(a[0])
    edit(b[0], SeriesInstanceUID=ds.SeriesInstanceUID, FrameOfReferenceUID=ds.FrameOfReferenceUID)
    with pytest.raises(VolumeError, match=r"same matrix size \(Rows × Columns\), got 6×6, 8×6"):
        read_series(a + b)


def test_mixed_series(tmp_path):
    a, _ = _flat_case(tmp_path, name="A")
    b, _ = _flat_case(tmp_path, name="B", n=9)
    with pytest.raises(VolumeError, match=r"one series, got 2 SeriesInstanceUIDs"):
        read_series(a + b)


def test_no_images(tmp_path):
    (tmp_path / "x.txt").write_text("not dicom")
    with pytest.raises(VolumeError, match=r"at least one DICOM image with pixel data, got none in 1 file"):
        read_series(tmp_path)


def test_localizer_by_orientation_is_split_off(tmp_path):
    arr = sphere_array(affine_for("axial"))
    a = write(tmp_path, "A", arr, affine_for("axial"))
    loc = write(tmp_path, "L", np.ones((1, 14, 12), np.float32), affine_for("coronal", origin=(0, 0, 30)))
    ds = pydicom.dcmread(a[0])
    edit(loc[0], SeriesInstanceUID=ds.SeriesInstanceUID, FrameOfReferenceUID=ds.FrameOfReferenceUID)
    vol = read_series(a + loc)
    np.testing.assert_array_equal(vol.array, arr)


def test_localizer_by_image_type_is_split_off(tmp_path):
    arr = sphere_array(affine_for("axial"))
    a = write(tmp_path, "A", arr, affine_for("axial"))
    loc = write(tmp_path, "L", np.ones((1, 14, 12), np.float32), affine_for("axial", origin=(-7, -8, 40)))
    ds = pydicom.dcmread(a[0])
    edit(loc[0], SeriesInstanceUID=ds.SeriesInstanceUID, FrameOfReferenceUID=ds.FrameOfReferenceUID,
         ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    vol = read_series(a + loc)
    assert vol.shape == SHAPE


# ----------------------------------------------------------------- selection, resampling
def _study(tmp: Path, names=("T1", "T1ce", "T2", "FLAIR")) -> dict[str, list[Path]]:
    study = StudyInfo.synthetic(7, "brain")
    aff = affine_for("axial")
    out = {}
    for n, name in enumerate(names):
        out[name] = write(tmp / "study", name, sphere_array(aff, value=10 + n), aff, study=study,
                          series_number=n + 1)
    return out


class _Ch:
    def __init__(self, name, modality="MR", rx=None):
        self.name, self.modality, self.series_description = name, modality, rx or f"^{name}$"


def test_select_series_by_modality_and_description(tmp_path):
    _study(tmp_path)
    chosen = select_series(tmp_path / "study", [_Ch("FLAIR"), _Ch("T1"), _Ch("T1ce", rx="(?i)^t1 ?(ce|c|gd)")])
    assert list(chosen) == ["FLAIR", "T1", "T1ce"]
    assert [c.series_description for c in chosen.values()] == ["FLAIR", "T1", "T1ce"]


def test_select_series_names_missing_channel(tmp_path):
    _study(tmp_path, names=("T1", "T1ce", "T2"))
    with pytest.raises(VolumeError, match=r"got no series for FLAIR \(Modality MR, SeriesDescription matching "
                                          r"'\^FLAIR\$'\); series found: T1 \(MR\), T1ce \(MR\), T2 \(MR\)"):
        select_series(tmp_path / "study", [_Ch("T1"), _Ch("T2"), _Ch("FLAIR")])


def test_select_series_from_series_dirs(tmp_path):
    series = _study(tmp_path)
    dirs = [series[n][0].parent for n in ("T2", "T1")]
    chosen = select_series(dirs, [_Ch("T1"), _Ch("T2")])
    assert chosen["T1"].files == tuple(series["T1"])
    assert len(scan_series(tmp_path / "study")) == 4


def test_resample_to_reference_in_patient_coordinates(tmp_path):
    ref_aff = affine_for("axial", spacing=(1.0, 1.0, 1.0), origin=(-7.0, -8.0, -6.0))
    mov_aff = affine_for("sagittal", spacing=(1.0, 1.0, 1.0), origin=(8.0, -9.0, 7.0))
    ref = read_series(write(tmp_path, "R", sphere_array(ref_aff, shape=(12, 12, 12), radius=4.5), ref_aff,
                            study=StudyInfo.synthetic(3, "brain")))
    mov = read_series(write(tmp_path, "M", sphere_array(mov_aff, shape=(18, 18, 18), radius=4.5), mov_aff,
                            study=StudyInfo.synthetic(3, "brain")))
    assert mov.frame_of_reference_uid == ref.frame_of_reference_uid
    out = resample_to_reference(mov, ref, order=0)
    assert out.shape == ref.shape and out.series_instance_uid == mov.series_instance_uid
    np.testing.assert_array_equal(out.array, ref.array)


def test_resample_refuses_other_frame_of_reference(tmp_path):
    aff = affine_for("axial")
    a = read_series(write(tmp_path, "A", sphere_array(aff), aff, study=StudyInfo.synthetic(1, "brain")))
    b = read_series(write(tmp_path, "B", sphere_array(aff), aff, study=StudyInfo.synthetic(2, "brain")))
    with pytest.raises(VolumeError, match=r"share the reference series' FrameOfReferenceUID, got"):
        resample_to_reference(b, a)
