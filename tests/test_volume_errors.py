"""Every series that is not one clean volume gives a VolumeError with its own exact message.

One table: how the series is spoiled, and the whole message expected (the rule, the value
received, what is valid). No traceback of any other type may come out of ``read_series``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from distillation.phantoms.dicom import write_series
from pacsnode.errors import VolumeError
from pacsnode.inference.card import Normalization
from pacsnode.inference.preprocessing import PreprocessingPlan, check_resamplable, preprocess
from pacsnode.volume import SliceGeometry, check_frames, read_series

N = 8  # slices of the clean series: axial, 2 mm apart, instance k + 1 at z = -9 + 2 k
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
ROTATED = [0.0, 1.0, 0.0, -1.0, 0.0, 0.0]  # in-plane 90°: the slice stays in its plane
TILTED = [1.0, 0.0, 0.0, 0.0, 0.9848077530, 0.1736481777]  # 10° about the row direction


def _series(tmp: Path) -> list[Path]:
    aff = np.eye(4)  # columns k, i, j: normal (2 mm), column cosine, row cosine (1 mm pixels)
    aff[:3, 0], aff[:3, 1], aff[:3, 2] = (0, 0, 2.0), (0, 1.0, 0), (1.0, 0, 0)
    aff[:3, 3] = (-7.0, -8.0, -9.0)
    arr = (np.arange(N * 6 * 5, dtype=np.float32).reshape(N, 6, 5) % 97) + 1
    return write_series(arr, aff, tmp / "S", modality="MR", series_description="S")


def _edit(path: Path, **attrs) -> None:
    ds = pydicom.dcmread(path)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path)


def _drop(path: Path, *keywords: str) -> None:
    ds = pydicom.dcmread(path)
    for k in keywords:
        delattr(ds, k)
    ds.save_as(path)


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _one_slice(f: list[Path]) -> dict:
    for p in f[1:]:
        p.unlink()
    return {}


def _duplicate(f: list[Path]) -> dict:
    copy = f[2].with_name("zz-dup.dcm")
    shutil.copy(f[2], copy)
    _edit(copy, SOPInstanceUID=generate_uid(), InstanceNumber=99)
    return {}


def _bad_slope(f: list[Path]) -> dict:
    _edit(f[3], RescaleSlope="9.5")
    raw = f[3].read_bytes()
    assert raw.count(b"9.5 ") == 1
    f[3].write_bytes(raw.replace(b"9.5 ", b"abc "))  # pydicom would refuse to write it
    return {}


def _missing_ipp(f: list[Path]) -> dict:
    _drop(f[3], "ImagePositionPatient")
    return {"uid": _uid(f[3])}


def _moved(k: int, dz: float) -> Callable[[list[Path]], dict]:
    def spoil(f: list[Path]) -> dict:
        _edit(f[k], ImagePositionPatient=[-7.0, -8.0, -9.0 + 2 * k + dz])
        return {}
    return spoil


def _set(k: int, **attrs) -> Callable[[list[Path]], dict]:
    def spoil(f: list[Path]) -> dict:
        _edit(f[k], **attrs)
        return {}
    return spoil


_ORIENT_VALID = "a series of parallel slices (plus at most a few localizers) is valid"

CASES: list[tuple[str, Callable[[list[Path]], dict], str]] = [
    ("one slice", _one_slice,
     "a volume needs at least 2 slices, got 1 (instance 1 at [-7, -8, -9]); a series of 2 or more parallel, "
     "equally spaced slices is valid (a single image has no slice spacing)"),
    ("one slice rotated in its plane", _set(4, ImageOrientationPatient=ROTATED),
     "all images of a volume must share one ImageOrientationPatient, got instance 5 at [-7, -8, -1] with "
     f"[0, 1, 0, -1, 0, 0] where the other 7 images have [1, 0, 0, 0, 1, 0]; {_ORIENT_VALID}"),
    ("one slice tilted", _set(4, ImageOrientationPatient=TILTED),
     "all images of a volume must share one ImageOrientationPatient, got instance 5 at [-7, -8, -1] with "
     f"[1, 0, 0, 0, 0.9848, 0.1736] where the other 7 images have [1, 0, 0, 0, 1, 0]; {_ORIENT_VALID}"),
    ("first slice rotated (never dropped as a localizer)", _set(0, ImageOrientationPatient=ROTATED),
     "all images of a volume must share one ImageOrientationPatient, got instance 1 at [-7, -8, -9] with "
     f"[0, 1, 0, -1, 0, 0] where the other 7 images have [1, 0, 0, 0, 1, 0]; {_ORIENT_VALID}"),
    ("missing slice", lambda f: (f[4].unlink(), {})[1],
     "a series must have no missing slices, got 1 missing: a gap of 4 mm after instance 4 at [-7, -8, -3] "
     "where the spacing is 2 mm; a complete series (every slice received) is valid"),
    ("duplicate position", _duplicate,
     "each slice position must occur once, got 1 duplicate(s), e.g. instance 3 and instance 99 both at "
     "[-7, -8, -5]; one image per position is valid (split multi-echo or multi-phase acquisitions into "
     "separate series)"),
    ("non-uniform spacing", _moved(5, 0.5),
     "slice spacing must be uniform within 1%, got steps from 1.5 to 2.5 mm (median 2 mm; e.g. 2.5 mm after "
     "instance 5 at [-7, -8, -1]); equally spaced slices are valid"),
    ("zero PixelSpacing", _set(3, PixelSpacing=[0.0, 1.0]),
     "PixelSpacing must be two positive finite numbers, got [0.0, 1.0] (in instance 4)"),
    ("NaN ImagePositionPatient", _set(3, ImagePositionPatient=[-7.0, -8.0, "nan"]),
     "ImagePositionPatient must be three finite numbers, got [-7.0, -8.0, nan] (in instance 4)"),
    ("infinite ImagePositionPatient", _set(3, ImagePositionPatient=[-7.0, "inf", -3.0]),
     "ImagePositionPatient must be three finite numbers, got [-7.0, inf, -3.0] (in instance 4)"),
    ("missing ImagePositionPatient", _missing_ipp,
     "every image of a volume must have ImagePositionPatient, ImageOrientationPatient and PixelSpacing, "
     "got instance 4 (SOPInstanceUID {uid}) without ImagePositionPatient"),
    ("mixed Rows", _set(3, Rows=7),
     "all images of a volume must have the same matrix size (Rows × Columns), got 6×5, 7×5 "
     "(e.g. instance 4 is 7×5); one matrix size is valid"),
    ("missing Rows", lambda f: (_drop(f[3], "Rows"), {})[1],
     "every image of a volume must have a numeric Rows, got None in instance 4"),
    ("mixed SOP classes", _set(3, SOPClassUID="1.2.840.10008.5.1.4.1.1.2"),
     "all images of a volume must share one SOPClassUID, got MR Image Storage (1.2.840.10008.5.1.4.1.1.4) in "
     "7 image(s), CT Image Storage (1.2.840.10008.5.1.4.1.1.2) in 1 image(s) (e.g. instance 4 has CT Image "
     "Storage (1.2.840.10008.5.1.4.1.1.2)); one SOPClassUID per series is valid"),
    ("mixed Modality", _set(3, Modality="CT"),
     "all images of a volume must share one Modality, got 'MR' in 7 image(s), 'CT' in 1 image(s) "
     "(e.g. instance 4 has 'CT'); one Modality per series is valid"),
    ("malformed RescaleSlope", _bad_slope,
     "RescaleSlope and RescaleIntercept must be finite numbers, got 'abc' and '0.0' (in instance 4)"),
    ("NaN RescaleSlope", _set(3, RescaleSlope="nan"),
     "RescaleSlope and RescaleIntercept must be finite numbers, got 'nan' and '0.0' (in instance 4)"),
]


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize(("spoil", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_series_gives_its_exact_message(tmp_path: Path, spoil, expected: str) -> None:
    files = _series(tmp_path)
    read_series(tmp_path / "S")  # the clean series is a volume
    values = spoil(files)
    with pytest.raises(VolumeError) as err:
        read_series(tmp_path / "S")
    assert str(err.value) == expected.format(**values)


def test_unmarked_localizer_off_the_slice_grid_is_still_split_off(tmp_path: Path) -> None:
    files = _series(tmp_path)
    # a coronal image whose corner lies far above the stack: a localizer, not a slice of it
    _edit(files[0], ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
          ImagePositionPatient=[-7.0, -8.0, 40.0])
    vol = read_series(tmp_path / "S")
    assert vol.shape == (N - 1, 6, 5)


def test_check_frames_names_images_without_names() -> None:
    g = SliceGeometry.from_attributes([0, 0, 0], AXIAL, [1, 1], 4, 4)
    with pytest.raises(VolumeError) as err:
        check_frames([g])
    assert str(err.value) == (
        "a volume needs at least 2 slices, got 1 (image 1 at [0, 0, 0]); a series of 2 or more parallel, "
        "equally spaced slices is valid (a single image has no slice spacing)")
    with pytest.raises(VolumeError, match=r"^a volume needs at least 2 slices, got 0;"):
        check_frames([])


# ------------------------------------------------------------- too short for the model's grid
PLAN = PreprocessingPlan((3.0, 1.0, 1.0), (Normalization("zscore", use_nonzero_mask=True),))


@pytest.mark.parametrize(("shape", "spacing", "expected"), [
    ((1, 8, 8), (1.0, 1.0, 1.0),
     "a volume needs at least 2 slices at 1 mm for the model's target spacing of 3 mm, got 1; "
     "a series spanning at least half a target voxel on every axis is valid"),
    ((3, 8, 8), (0.5, 1.0, 1.0),
     "a volume needs at least 4 slices at 0.5 mm for the model's target spacing of 3 mm, got 3; "
     "a series spanning at least half a target voxel on every axis is valid"),
    ((4, 1, 8), (1.0, 0.4, 1.0),
     "a volume needs at least 2 rows at 0.4 mm for the model's target spacing of 1 mm, got 1; "
     "a series spanning at least half a target voxel on every axis is valid"),
])
def test_volume_too_short_for_the_target_spacing(shape, spacing, expected) -> None:
    with pytest.raises(VolumeError) as err:
        check_resamplable(shape, spacing, PLAN.target_spacing)
    assert str(err.value) == expected
    with pytest.raises(VolumeError) as err:  # preprocessing refuses it the same way, no ZeroDivisionError
        preprocess(np.ones((1, *shape), np.float32), spacing, PLAN)
    assert str(err.value) == expected


def test_shorter_than_the_patch_is_fine_and_a_thin_crop_keeps_one_slice() -> None:
    check_resamplable((2, 8, 8), (1.0, 1.0, 1.0), PLAN.target_spacing)  # 2 mm → 1 slice at 3 mm
    img = np.zeros((1, 6, 8, 8), np.float32)
    img[0, 2, 2:6, 2:6] = 5.0  # the nonzero region is one 1-mm slice: a third of a target voxel
    pre = preprocess(img, (1.0, 1.0, 1.0), PLAN)
    assert pre.shape_after_crop == (1, 4, 4) and pre.data.shape == (1, 1, 4, 4)
