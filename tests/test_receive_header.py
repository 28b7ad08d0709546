"""The receive stage's structural walk and its rules at the door (pacsnode.receive.header, .validate).

The walk is compared with pydicom reading the whole file itself (not with a fallback of the
code under test), on pydicom's own test files in several transfer syntaxes, whole and cut
into fragments the way PDUs cut them; then each rule is broken once and its status and
message pinned.
"""

from __future__ import annotations

import struct
from io import BytesIO

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from pacsnode.errors import ReceiveError
from pacsnode.receive.header import Malformed, header_of, read_header
from pacsnode.receive.validate import (
    STATUS_INVALID_UID,
    STATUS_PIXEL_DATA_LENGTH,
    STATUS_SOP_CLASS_MISMATCH,
    STATUS_UID_MISMATCH,
    Refusal,
    check_instance,
    is_valid_uid,
)


def _body(path: str) -> tuple[bytes, str]:
    raw = open(path, "rb").read()
    meta_len = int.from_bytes(raw[140:144], "little")
    return raw[144 + meta_len:], str(pydicom.dcmread(path).file_meta.TransferSyntaxUID)


FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm",
         "SC_rgb_rle.dcm", "image_dfl.dcm", "liver_1frame.dcm", "SC_rgb_small_odd.dcm",
         "UN_sequence.dcm", "JPEG2000-embedded-sequence-delimiter.dcm", "SC_ybr_full_422_uncompressed.dcm"]


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("fragment", [None, 4096, 7])
def test_walk_reads_what_pydicom_reads(name: str, fragment: int | None) -> None:
    path = get_testdata_file(name)
    data, ts = _body(path)
    chunks = [data] if fragment is None else [memoryview(data)[i:i + fragment]
                                                for i in range(0, len(data), fragment)]
    ds = pydicom.dcmread(path)
    if "SOPInstanceUID" not in ds:  # a bare data set: its structure walks, the node still refuses it
        with pytest.raises(ReceiveError, match="an instance must carry SOPClassUID"):
            header_of(chunks, ts)
        return
    h = header_of(chunks, ts)
    assert (h.sop_class_uid, h.sop_instance_uid, h.study_uid, h.series_uid) == (
        ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert h.attributes.modality == ds.get("Modality", "")
    assert h.attributes.series_description == ds.get("SeriesDescription", "")
    assert h.pixels.rows == ds.get("Rows") and h.pixels.columns == ds.get("Columns")
    if "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
        assert h.pixels.pixel_data_length == len(ds.PixelData)
        check_instance(h, ts, ds.SOPInstanceUID)  # pydicom's own files pass every rule


def _dataset(rows: int = 4, cols: int = 4, pixel: bytes | None = None, **uids: str) -> tuple[bytes, Dataset]:
    ds = Dataset()
    ds.SOPClassUID = uids.get("cls", CTImageStorage)
    ds.SOPInstanceUID = uids.get("sop", "1.2.3.4")
    ds.Modality = "CT"
    ds.StudyInstanceUID = uids.get("study", "1.2.3")
    ds.SeriesInstanceUID = uids.get("series", "1.2.3.1")
    ds.SamplesPerPixel, ds.Rows, ds.Columns, ds.BitsAllocated = 1, rows, cols, 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = pixel if pixel is not None else bytes(rows * cols * 2)
    buf = BytesIO()
    ds.save_as(buf, implicit_vr=False, little_endian=True)
    return buf.getvalue(), ds


def test_no_prefix_of_an_image_passes() -> None:
    data, _ = _dataset()
    check_instance(read_header(data, ExplicitVRLittleEndian), ExplicitVRLittleEndian, "1.2.3.4")
    passed = []
    for cut in range(1, len(data)):
        try:
            h = read_header(data[:cut], ExplicitVRLittleEndian)
            check_instance(h, ExplicitVRLittleEndian, "1.2.3.4")
        except ReceiveError:  # Malformed, a missing UID, or a Refusal (an image without its pixels)
            continue
        passed.append(cut)
    assert passed == []  # cut mid-element or at an element boundary, every truncation is refused


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d + b"\x00\x00\x00", "must end on an element boundary, got 3 stray bytes"),
    (lambda d: d.replace(b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00Q!"),
     "element (0008,0060) must have a DICOM VR, got b'Q!'"),
    (lambda d: d + struct.pack("<HH", 0x0009, 0x0010) + b"LO" + struct.pack("<H", 40) + b"ab",
     "must fit in the data set, got length 40 with 2 bytes left"),
    (lambda d: d + struct.pack("<HH2sHI", 0x0008, 0x1115, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF),
     "an item of undefined length must end with an Item Delimitation"),
])
def test_malformed_data_sets_are_named(mutate, message: str) -> None:
    data, _ = _dataset()
    with pytest.raises(Malformed, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_header(mutate(data), ExplicitVRLittleEndian)


@pytest.mark.parametrize("uid, ok", [
    ("1.2.840.10008.5.1.4.1.1.2", True), ("0.1", True), ("1.02.3", False), ("1..2", False),
    ("../../etc", False), ("1.2.\u00e93", False), ("1.2\x003", False), ("1" * 65, False), ("", False),
])
def test_uids_follow_ps3_5(uid: str, ok: bool) -> None:
    assert is_valid_uid(uid) is ok


@pytest.mark.parametrize("kwargs, status, message", [
    ({"sop": "1.2.03"}, STATUS_INVALID_UID, "SOP Instance UID must be a PS3.5 UID"),
    ({"study": "../../x"}, STATUS_INVALID_UID, "Study Instance UID must be a PS3.5 UID"),
    ({"pixel": b""}, STATUS_PIXEL_DATA_LENGTH, "= 32 bytes, got 0"),
    ({"pixel": bytes(20)}, STATUS_PIXEL_DATA_LENGTH,
     "Pixel Data must be Rows x Columns x Samples x Bits Allocated / 8 x Frames = 4 x 4 x 1 x 16 / 8 x 1 = 32 bytes, got 20"),
])
def test_each_rule_has_its_status(kwargs: dict, status: int, message: str) -> None:
    data, _ = _dataset(**kwargs)
    h = read_header(data, ExplicitVRLittleEndian)
    with pytest.raises(Refusal) as err:
        check_instance(h, ExplicitVRLittleEndian, h.sop_instance_uid)
    assert err.value.status == status and message in str(err.value)


def test_sop_class_and_instance_must_match_the_request() -> None:
    data, _ = _dataset()
    h = read_header(data, ExplicitVRLittleEndian)
    with pytest.raises(Refusal) as err:
        check_instance(h, ExplicitVRLittleEndian, h.sop_instance_uid, abstract_syntax=MRImageStorage)
    assert err.value.status == STATUS_SOP_CLASS_MISMATCH
    assert str(err.value) == (f"the data set's SOP Class UID must be the presentation context's abstract "
                              f"syntax {MRImageStorage}, got {CTImageStorage}")
    with pytest.raises(Refusal) as err:
        check_instance(h, ExplicitVRLittleEndian, "1.2.3.5")
    assert err.value.status == STATUS_UID_MISMATCH
