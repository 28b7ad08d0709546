"""Reading a received data set at the door: one structural walk, the header the node needs.

:func:`read_header` walks every element of an encoded data set (no file meta), in the
transfer syntax it arrived in, without building a pydicom Dataset: element headers,
sequences and items of defined and undefined length, encapsulated Pixel Data fragments,
to the last byte. A data set that does not parse completely is refused here, before
anything is written (a file the pipeline could not read back is never acknowledged).
On the way it keeps the few top-level values the node needs: the UIDs and routing
attributes, and the image pixel attributes :mod:`pacsnode.receive.validate` checks
Pixel Data's length against.

The data set may arrive in fragments (the fast data phase keeps each PDU's bytes as a
view); the walk reads across them without joining them.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsnode.errors import ReceiveError
from pacsnode.ledger import SeriesAttributes

__all__ = ["Header", "PixelInfo", "read_header", "header_of", "encode_file_meta"]

_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_MAX_DEPTH = 16
_MAX_INFLATED = 1 << 31  # a deflated data set larger than 2 GiB is refused, not inflated

_VRS = frozenset(v.encode() for v in (
    "AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    "UR US UT UV").split())
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                       b"UT", b"UV"))

_TEXT = {
    0x00080005: "SpecificCharacterSet", 0x00080008: "ImageType", 0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID", 0x00080060: "Modality", 0x0008103E: "SeriesDescription",
    0x00180015: "BodyPartExamined", 0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID",
    0x00200011: "SeriesNumber", 0x00280004: "PhotometricInterpretation", 0x00280008: "NumberOfFrames",
}
_US = {0x00280002: "SamplesPerPixel", 0x00280010: "Rows", 0x00280011: "Columns",
       0x00280100: "BitsAllocated"}
_CODECS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf-8"}
_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class Malformed(ReceiveError):
    """The data set does not parse: answered 0xC000 (cannot understand)."""


@dataclass(frozen=True)
class PixelInfo:
    """What the data set says about its pixels (None where absent)."""

    rows: int | None
    columns: int | None
    samples_per_pixel: int | None
    bits_allocated: int | None
    number_of_frames: str | None
    pixel_data_length: int | None  # None: no Pixel Data; -1: encapsulated (undefined length)
    photometric: str = ""
    float_pixels: bool = False  # Float or Double Float Pixel Data instead


@dataclass(frozen=True)
class Header:
    """The UIDs and routing attributes of one instance, and its pixel description."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    attributes: SeriesAttributes
    pixels: PixelInfo = PixelInfo(None, None, None, None, None, None)


_EXPLICIT = struct.Struct("<HH2sH")
_IMPLICIT = struct.Struct("<HHI")
_U32 = struct.Struct("<I")


class _Bytes:
    """Random access over a data set received in fragments (no join)."""

    __slots__ = ("chunks", "starts", "size", "_cur", "_lo", "_hi")

    def __init__(self, chunks: Sequence[bytes | bytearray | memoryview]) -> None:
        self.chunks = [memoryview(c).cast("B") if isinstance(c, memoryview) else memoryview(c) for c in chunks]
        self.starts: list[int] = []
        size = 0
        for c in self.chunks:
            self.starts.append(size)
            size += c.nbytes
        self.size = size
        self._cur, self._lo, self._hi = (self.chunks[0], 0, self.chunks[0].nbytes) if self.chunks else (b"", 0, 0)

    def view(self, pos: int, n: int) -> tuple[memoryview | bytes, int]:
        """``n`` bytes at ``pos`` as (buffer, offset in it): a view of one fragment when they
        lie in one (the common case), else a copy."""
        if self._lo <= pos and pos + n <= self._hi:
            return self._cur, pos - self._lo
        i = bisect.bisect_right(self.starts, pos) - 1
        c = self.chunks[i]
        self._cur, self._lo, self._hi = c, self.starts[i], self.starts[i] + c.nbytes
        if pos + n <= self._hi:
            return c, pos - self._lo
        return self.get(pos, n), 0

    def get(self, pos: int, n: int) -> bytes:
        i = bisect.bisect_right(self.starts, pos) - 1
        off = pos - self.starts[i]
        c = self.chunks[i]
        if off + n <= c.nbytes:
            return bytes(c[off:off + n])
        out = bytearray(c[off:])
        i += 1
        while len(out) < n and i < len(self.chunks):
            out += self.chunks[i][:n - len(out)]
            i += 1
        return bytes(out)


class _Walker:
    """One pass over the element structure; keeps the wanted top-level values."""

    def __init__(self, buf: _Bytes, implicit: bool) -> None:
        self.buf = buf
        self.implicit = implicit
        self.values: dict[int, bytes] = {}
        self.pixel_length: int | None = None
        self.float_pixels = False

    def run(self) -> None:
        if not self.implicit and self.buf.size >= 6 and self.buf.get(4, 2) not in _VRS:
            # an Implicit VR data set sent on an Explicit VR context: pydicom reads it so too
            self.implicit = True
        self._dataset(0, self.buf.size, self.implicit, 0, top=True, until_item_end=False)

    def _dataset(self, pos: int, end: int, implicit: bool, depth: int, *, top: bool,
                 until_item_end: bool) -> int:
        view, get = self.buf.view, self.buf.get
        explicit_unpack, implicit_unpack, u32 = _EXPLICIT.unpack_from, _IMPLICIT.unpack_from, _U32.unpack_from
        while pos < end:
            if pos + 8 > end:
                raise Malformed(f"the data set must end on an element boundary, got {end - pos} stray "
                                f"bytes at offset {pos}")
            c, o = view(pos, 8)
            if implicit:
                group, elem, length = implicit_unpack(c, o)
                vr = b""
                vpos = pos + 8
            else:
                group, elem, vr, length = explicit_unpack(c, o)
                vpos = pos + 8
            tag = group << 16 | elem
            if tag == _ITEM_END and until_item_end:
                return pos + 8
            if group == 0xFFFE:
                raise Malformed(f"an item tag ({group:04X},{elem:04X}) must not stand among data "
                                f"elements, got one at offset {pos}")
            if not implicit:
                if vr not in _VRS:
                    raise Malformed(f"element ({group:04X},{elem:04X}) must have a DICOM VR, got {vr!r}")
                if vr in _LONG_VRS:
                    if pos + 12 > end:
                        raise Malformed(f"element ({group:04X},{elem:04X}) is cut off in its header")
                    c, o = view(pos + 8, 4)
                    (length,) = u32(c, o)
                    vpos = pos + 12
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA and depth == 0:
                    pos = self._fragments(vpos, end)
                    self.pixel_length = -1
                elif implicit or vr in (b"SQ", b"UN"):
                    pos = self._sequence(vpos, end, implicit or vr == b"UN", depth + 1, None)
                else:
                    raise Malformed(f"element ({group:04X},{elem:04X}) with VR {vr.decode()} must have "
                                    f"a defined length, got undefined")
                continue
            if vpos + length > end:
                raise Malformed(f"element ({group:04X},{elem:04X}) must fit in the data set, got "
                                f"length {length} with {end - vpos} bytes left")
            if vr == b"SQ" and length:
                self._sequence(vpos, end, implicit, depth + 1, vpos + length)
            elif top:
                if tag == _PIXEL_DATA:
                    self.pixel_length = length
                elif tag in (0x7FE00008, 0x7FE00009):
                    self.float_pixels = True
                elif tag in _TEXT or tag in _US:
                    self.values[tag] = get(vpos, length)
            pos = vpos + length
        if until_item_end:
            raise Malformed("an item of undefined length must end with an Item Delimitation, got the "
                            "end of its container")
        return pos

    def _sequence(self, pos: int, end: int, implicit: bool, depth: int, seq_end: int | None) -> int:
        """Items of a sequence: up to ``seq_end`` (defined) or its Sequence Delimitation."""
        if depth > _MAX_DEPTH:
            raise Malformed(f"sequences must nest at most {_MAX_DEPTH} deep, got deeper")
        limit = end if seq_end is None else seq_end
        get = self.buf.get
        while pos < limit:
            if pos + 8 > limit:
                raise Malformed(f"a sequence item header must be 8 bytes, got {limit - pos}")
            tag_group, tag_elem, length = struct.unpack("<HHI", get(pos, 8))
            tag = tag_group << 16 | tag_elem
            pos += 8
            if tag == _SEQ_END and seq_end is None:
                return pos
            if tag != _ITEM:
                raise Malformed(f"a sequence must hold items (FFFE,E000), got ({tag_group:04X},{tag_elem:04X})")
            if length == _UNDEFINED:
                pos = self._dataset(pos, limit, implicit, depth, top=False, until_item_end=True)
            else:
                if pos + length > limit:
                    raise Malformed(f"a sequence item must fit in its sequence, got length {length} with "
                                    f"{limit - pos} bytes left")
                self._dataset(pos, pos + length, implicit, depth, top=False, until_item_end=False)
                pos += length
        if seq_end is None:
            raise Malformed("a sequence of undefined length must end with a Sequence Delimitation, got "
                            "the end of the data set")
        return pos

    def _fragments(self, pos: int, end: int) -> int:
        """Encapsulated Pixel Data: items of defined length, then the Sequence Delimitation."""
        get = self.buf.get
        while pos + 8 <= end:
            g, e, length = struct.unpack("<HHI", get(pos, 8))
            tag = g << 16 | e
            pos += 8
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM or length == _UNDEFINED or pos + length > end:
                raise Malformed("encapsulated Pixel Data must be items of defined length that fit, got "
                                f"({g:04X},{e:04X}) of length {length}")
            pos += length
        raise Malformed("encapsulated Pixel Data must end with a Sequence Delimitation, got the end of "
                        "the data set")


def _inflate(chunks: Sequence[bytes | bytearray | memoryview]) -> bytes:
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    try:
        for c in chunks:
            out += d.decompress(c, _MAX_INFLATED - len(out))
            if d.unconsumed_tail:
                raise Malformed(f"a deflated data set must inflate to at most {_MAX_INFLATED} bytes")
        out += d.flush()
    except zlib.error as exc:
        raise Malformed(f"a deflated data set must inflate, got zlib error: {exc}") from None
    return bytes(out)


def _text(raw: bytes, charsets: list[str]) -> str:
    try:
        return decode_bytes(raw, charsets, set()).strip(" \0")
    except Exception:  # an unknown character set: the UIDs are ASCII whatever it says
        return raw.decode("latin-1").strip(" \0")


def header_of(chunks: Sequence[bytes | bytearray | memoryview], transfer_syntax: str) -> Header:
    """Walk a data set received as ``chunks`` completely and return its header.

    Raises :class:`Malformed` when it does not parse, :class:`ReceiveError` ("must carry")
    when a UID is missing."""
    implicit = transfer_syntax == ImplicitVRLittleEndian
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        chunks = [_inflate(chunks)]
    walker = _Walker(_Bytes(chunks), implicit)
    walker.run()
    raw = walker.values
    charset_raw = raw.get(0x00080005, b"").decode("ascii", "replace").strip(" \0")
    codec = _CODECS.get(charset_raw)
    if codec is not None:  # the common single-byte or UTF-8 sets: no pydicom machinery
        text = {_TEXT[t]: v.decode(codec, "replace").strip(" \0") for t, v in raw.items() if t in _TEXT}
    else:
        charsets = convert_encodings([v.strip() for v in charset_raw.split("\\")])
        text = {_TEXT[t]: _text(v, charsets) for t, v in raw.items() if t in _TEXT}
    us = {}
    for t, v in raw.items():
        if t in _US:
            if len(v) != 2:
                raise Malformed(f"{_US[t]} must be one US value (2 bytes), got {len(v)} bytes")
            us[_US[t]] = struct.unpack("<H", v)[0]
    missing = [k for k in _UIDS if not text.get(k)]
    if missing:
        raise ReceiveError(f"an instance must carry {', '.join(missing)}, got none")
    number = text.get("SeriesNumber", "")
    try:
        series_number = int(number) if number else None
    except ValueError:
        series_number = None  # an odd IS value does not stop the instance; routing ignores it
    image_type = text.get("ImageType")
    attrs = SeriesAttributes(
        modality=text.get("Modality", ""),
        series_description=text.get("SeriesDescription", ""),
        body_part=text.get("BodyPartExamined", ""),
        image_type=tuple(v.strip() for v in image_type.split("\\")) if image_type else (),
        sop_class_uid=text["SOPClassUID"],
        series_number=series_number,
    )
    pixels = PixelInfo(us.get("Rows"), us.get("Columns"), us.get("SamplesPerPixel"),
                       us.get("BitsAllocated"), text.get("NumberOfFrames"), walker.pixel_length,
                       text.get("PhotometricInterpretation", ""), walker.float_pixels)
    return Header(text["SOPClassUID"], text["SOPInstanceUID"], text["StudyInstanceUID"],
                  text["SeriesInstanceUID"], attrs, pixels)


def read_header(data: bytes | bytearray | memoryview, transfer_syntax: str) -> Header:
    """:func:`header_of` for a data set in one piece."""
    return header_of([data], transfer_syntax)


# --- file meta ----------------------------------------------------------------------------------


def _element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    tag = struct.pack("<HH", group_elem >> 16, group_elem & 0xFFFF)
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return tag + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def _ui(v: str) -> bytes:
    b = v.encode("ascii")
    return b + b"\0" if len(b) % 2 else b


def _cs(v: str) -> bytes:
    b = v.encode("ascii", "replace")
    return b + b" " if len(b) % 2 else b


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                     source_ae: str = "") -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (Explicit VR Little Endian)."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    body = b"".join((
        _element(0x00020001, b"OB", b"\x00\x01"),
        _element(0x00020002, b"UI", _ui(sop_class_uid)),
        _element(0x00020003, b"UI", _ui(sop_instance_uid)),
        _element(0x00020010, b"UI", _ui(transfer_syntax)),
        _element(0x00020012, b"UI", _ui(PYNETDICOM_IMPLEMENTATION_UID)),
        _element(0x00020013, b"SH", _cs(PYNETDICOM_IMPLEMENTATION_VERSION)),
        _element(0x00020016, b"AE", _cs(source_ae)) if source_ae else b"",
    ))
    return b"\0" * 128 + b"DICM" + _element(0x00020000, b"UL", struct.pack("<I", len(body))) + body
