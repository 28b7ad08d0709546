"""Validation at the door: what a received data set must be before it is acknowledged.

Each rule has its DIMSE status (PS3.4 Annex B.2.3 for the standard ones; the node's own
codes stay in the "Cannot understand" range 0xCxxx):

=========  ===================================================================
0x0000     Success (also for a duplicate SOP Instance UID, not stored twice)
0xA700     Out of resources: free disk below ``node.min_free_disk_mb`` for the bytes
           about to be written, or ENOSPC anywhere (spool, journal, ledger)
0xA900     Data set does not match SOP class: its SOP Class UID differs from the
           presentation context's abstract syntax or the request's Affected SOP Class
0xC000     Cannot understand: the data set does not parse completely
0xC001     a required UID is missing
0xC002     the data set's SOP Instance UID differs from the request's
0xC003     a UID does not conform to PS3.5 §9 (digits and dots, no leading zeros, ≤ 64)
0xC004     native Pixel Data whose length is not Rows × Columns × Samples per Pixel ×
           Bits Allocated / 8 × Number of Frames (or encapsulated where it must not be)
0x0110     any other processing failure
=========  ===================================================================

A refused instance leaves nothing behind: the checks run before anything is written.
"""

from __future__ import annotations

import re

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pacsnode.errors import ReceiveError
from pacsnode.receive.header import Header

__all__ = [
    "Refusal",
    "check_instance",
    "is_valid_uid",
    "STATUS_SUCCESS",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SOP_CLASS_MISMATCH",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_MISSING_UID",
    "STATUS_UID_MISMATCH",
    "STATUS_INVALID_UID",
    "STATUS_PIXEL_DATA_LENGTH",
    "STATUS_PROCESSING_FAILURE",
]

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_MISSING_UID = 0xC001
STATUS_UID_MISMATCH = 0xC002
STATUS_INVALID_UID = 0xC003
STATUS_PIXEL_DATA_LENGTH = 0xC004
STATUS_PROCESSING_FAILURE = 0x0110

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_NATIVE = frozenset((ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian))


class Refusal(ReceiveError):
    """An instance refused with a specific DIMSE status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_valid_uid(uid: str) -> bool:
    """PS3.5 §9.1: at most 64 characters, dot-separated numbers without leading zeros."""
    return 0 < len(uid) <= 64 and _UID_RE.match(uid) is not None


def _clean(uid: str) -> str:
    return uid.strip().rstrip("\0").strip()


def check_instance(header: Header, transfer_syntax: str, affected_sop_instance_uid: str,
                   abstract_syntax: str | None = None, affected_sop_class_uid: str | None = None) -> None:
    """Raise :class:`Refusal` with the status of the first rule ``header`` breaks."""
    for name, uid in (("SOP Class UID", header.sop_class_uid), ("SOP Instance UID", header.sop_instance_uid),
                      ("Study Instance UID", header.study_uid), ("Series Instance UID", header.series_uid)):
        if not is_valid_uid(uid):
            raise Refusal(STATUS_INVALID_UID, f"{name} must be a PS3.5 UID (digits and dots, no leading "
                                              f"zeros, at most 64 characters), got {uid[:80]!r}")
    affected = _clean(affected_sop_instance_uid)
    if affected != header.sop_instance_uid:
        raise Refusal(STATUS_UID_MISMATCH, f"the data set's SOP Instance UID must be the request's "
                                           f"{affected[:80]!r}, got {header.sop_instance_uid!r}")
    for what, expected in (("presentation context's abstract syntax", abstract_syntax),
                           ("request's Affected SOP Class UID", affected_sop_class_uid)):
        if expected is not None and _clean(expected) != header.sop_class_uid:
            raise Refusal(STATUS_SOP_CLASS_MISMATCH, f"the data set's SOP Class UID must be the {what} "
                                                     f"{_clean(expected)[:80]}, got {header.sop_class_uid}")
    _check_pixels(header, transfer_syntax)


def _is_image(sop_class_uid: str) -> bool:
    """A storage SOP class whose IOD has the Image Pixel module (its name says Image Storage)."""
    return UID(sop_class_uid).name.endswith("Image Storage")


def _check_pixels(header: Header, transfer_syntax: str) -> None:
    px = header.pixels
    if px.pixel_data_length is None:
        if _is_image(header.sop_class_uid) and not px.float_pixels:
            raise Refusal(STATUS_PIXEL_DATA_LENGTH, f"an instance of {UID(header.sop_class_uid).name} must "
                                                    f"carry Pixel Data, got none")
        return
    native = transfer_syntax in _NATIVE
    if px.pixel_data_length == -1:
        if native:
            raise Refusal(STATUS_PIXEL_DATA_LENGTH, f"Pixel Data must be native in transfer syntax "
                                                    f"{transfer_syntax}, got encapsulated")
        return
    if not native:
        raise Refusal(STATUS_PIXEL_DATA_LENGTH, f"Pixel Data must be encapsulated in transfer syntax "
                                                f"{transfer_syntax}, got native")
    absent = [n for n, v in (("Rows", px.rows), ("Columns", px.columns), ("Bits Allocated", px.bits_allocated))
              if not v]
    if absent:
        raise Refusal(STATUS_PIXEL_DATA_LENGTH, f"Pixel Data needs {', '.join(absent)} (positive), got none")
    try:
        frames = int(px.number_of_frames) if px.number_of_frames else 1
    except ValueError:
        raise Refusal(STATUS_PIXEL_DATA_LENGTH, f"Number of Frames must be an integer, got "
                                                f"{px.number_of_frames!r}") from None
    if frames < 1:
        raise Refusal(STATUS_PIXEL_DATA_LENGTH, f"Number of Frames must be at least 1, got {frames}")
    samples = px.samples_per_pixel or 1
    if px.photometric in ("YBR_FULL_422", "YBR_PARTIAL_422"):
        samples = 2  # PS3.3 C.7.6.3.1.2: two chroma values shared by each pair of pixels
    bits = (px.rows or 0) * (px.columns or 0) * samples * (px.bits_allocated or 0) * frames
    expected = (bits + 7) // 8
    if px.pixel_data_length not in (expected, expected + expected % 2):
        raise Refusal(STATUS_PIXEL_DATA_LENGTH,
                      f"Pixel Data must be Rows x Columns x Samples x Bits Allocated / 8 x Frames = "
                      f"{px.rows} x {px.columns} x {samples} x {px.bits_allocated} / 8 x "
                      f"{frames} = {expected} bytes, got {px.pixel_data_length}")
