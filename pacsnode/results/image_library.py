"""The SR's Image Library (TID 1600) for a whole series, at the cost of a copy per image.

highdicom's ``ImageLibrary`` builds some 25 validated content items per source image
(~10-20 ms each on this kind of machine: 1.5 s for a 78-slice MR, 6 s for a 300-slice CT), and
``Comprehensive3DSR`` then deep-copies and re-parses whatever content it is given (another
~4 s for the 78 slices). :func:`image_library` lets highdicom build the entry of the first
image of each kind (modality, frame of reference, which descriptors it has) and gives every
other image of that kind a copy of it with its own values: the referenced SOP instance and the
numeric descriptors of TID 1602/1604 (rows, columns, pixel spacing, slice thickness, position,
orientation, spacing between slices). Structure, codes, units and number formats stay
highdicom's; an entry with a descriptor not listed here (e.g. projection radiography) is built
by highdicom for every image. ``tests/test_sr_image_library.py`` checks the result equals
highdicom's own library, image for image.

:func:`insert_image_library` puts it where highdicom's ``MeasurementReport`` does (after the
procedures reported), into an SR already built without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import highdicom as hd
from pydicom import Dataset, config
from pydicom.dataelem import DataElement
from pydicom.sr.codedict import codes
from pydicom.valuerep import DS

__all__ = ["image_library", "insert_image_library"]


def _at(keyword: str, index: int | None = None) -> Callable[[Dataset], Any]:
    if index is None:
        return lambda ds: ds[keyword].value
    return lambda ds: ds[keyword].value[index]


# numeric descriptors (concept name code value → the source attribute it reports)
_NUMERIC: dict[str, Callable[[Dataset], Any]] = {
    codes.DCM.PixelDataRows.value: _at("Rows"),
    codes.DCM.PixelDataColumns.value: _at("Columns"),
    codes.DCM.HorizontalPixelSpacing.value: _at("PixelSpacing", 1),
    codes.DCM.VerticalPixelSpacing.value: _at("PixelSpacing", 0),
    codes.DCM.SliceThickness.value: _at("SliceThickness"),
    codes.DCM.ImagePositionPatientX.value: _at("ImagePositionPatient", 0),
    codes.DCM.ImagePositionPatientY.value: _at("ImagePositionPatient", 1),
    codes.DCM.ImagePositionPatientZ.value: _at("ImagePositionPatient", 2),
    codes.DCM.ImageOrientationPatientRowX.value: _at("ImageOrientationPatient", 0),
    codes.DCM.ImageOrientationPatientRowY.value: _at("ImageOrientationPatient", 1),
    codes.DCM.ImageOrientationPatientRowZ.value: _at("ImageOrientationPatient", 2),
    codes.DCM.ImageOrientationPatientColumnX.value: _at("ImageOrientationPatient", 3),
    codes.DCM.ImageOrientationPatientColumnY.value: _at("ImageOrientationPatient", 4),
    codes.DCM.ImageOrientationPatientColumnZ.value: _at("ImageOrientationPatient", 5),
    codes.DCM.SpacingBetweenSlices.value: _at("SpacingBetweenSlices"),
}
# descriptors that are the same for every image of a kind (the kind is keyed on them)
_SHARED = {codes.DCM.Modality.value, codes.DCM.FrameOfReferenceUID.value}
_PROCEDURE_REPORTED = codes.DCM.ProcedureReported.value
_IMAGE_LIBRARY = codes.DCM.ImageLibrary.value
_CONTENT_SEQUENCE = 0x0040A730


def _code(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def _clone(ds: Dataset) -> Dataset:
    """A copy of an SR content item: new datasets and sequences, element values shared (every
    value that differs between images is replaced, never changed in place)."""
    out = Dataset()
    for elem in ds:  # values came out of highdicom validated: not converted or checked again
        value = [_clone(item) for item in elem.value] if elem.VR == "SQ" else elem.value
        out.add(DataElement(elem.tag, elem.VR, value, already_converted=elem.VR != "SQ",
                            validation_mode=config.IGNORE))
    return out


def _kind(ds: Dataset) -> tuple[Any, ...]:
    return (str(ds.SOPClassUID), str(ds.get("Modality", "")), str(ds.get("FrameOfReferenceUID", "")),
            "SpacingBetweenSlices" in ds, "SliceThickness" in ds)


def _group_key(image: Dataset, ds: Dataset) -> tuple[str, ...]:
    """highdicom's grouping: the coded modality (from the SOP class) and the frame of reference."""
    modality = next((str(item.ConceptCodeSequence[0].CodeValue) for item in image.ContentSequence
                     if _code(item) == codes.DCM.Modality.value), "")
    return (modality, str(ds.get("FrameOfReferenceUID", "")))


def _highdicom_entry(ds: Dataset) -> tuple[Dataset, Dataset, Dataset]:
    """(the library container and its group item, both without content below them, and the image
    item) as highdicom builds them for ``ds``."""
    library = hd.sr.ImageLibrary([ds])[0]
    group = library.ContentSequence[0]
    image = group.ContentSequence[-1]
    container = _clone(library)
    container.ContentSequence = []
    head = _clone(group)
    head.ContentSequence = [item for item in head.ContentSequence
                            if item.get("ValueType") != "IMAGE"]
    return container, head, image


def _copyable(entry: Dataset) -> bool:
    return all(_code(item) in _NUMERIC or _code(item) in _SHARED for item in entry.ContentSequence)


def _entry_from(template: Dataset, ds: Dataset) -> Dataset:
    entry = _clone(template)
    ref = entry.ReferencedSOPSequence[0]
    ref.ReferencedSOPClassUID = str(ds.SOPClassUID)
    ref.ReferencedSOPInstanceUID = str(ds.SOPInstanceUID)
    for item in entry.ContentSequence:
        get = _NUMERIC.get(_code(item))
        if get is None:
            continue
        value = get(ds)
        measured = item.MeasuredValueSequence[0]
        measured.NumericValue = DS(value, auto_format=True)
        if isinstance(value, float):
            measured.FloatingPointValue = value
        elif "FloatingPointValue" in measured:
            del measured.FloatingPointValue
    return entry


def image_library(datasets: Sequence[Dataset]) -> Dataset:
    """The Image Library container (TID 1600) listing ``datasets``, as highdicom's
    ``ImageLibrary(datasets)`` builds it: one group per SOP class and frame of reference, in
    the order first seen, images in the order given."""
    if not datasets:
        raise ValueError("an Image Library needs at least one image")
    templates: dict[tuple[Any, ...], tuple[Dataset, Dataset, bool, tuple[str, ...]]] = {}
    groups: dict[tuple[str, ...], Dataset] = {}
    library: Dataset | None = None
    for ds in datasets:
        kind = _kind(ds)
        if kind in templates:
            head, image, copyable, key = templates[kind]
            entry = _entry_from(image, ds) if copyable else _highdicom_entry(ds)[2]
        else:
            container, head, image = _highdicom_entry(ds)
            library = library or container
            key = _group_key(image, ds)
            templates[kind] = (head, image, _copyable(image), key)
            entry = image
        if key not in groups:
            groups[key] = _clone(head)
        groups[key].ContentSequence.append(entry)
    assert library is not None  # the first image made it
    library.ContentSequence = list(groups.values())
    return library


def insert_image_library(sr: Dataset, datasets: Sequence[Dataset]) -> None:
    """Add the Image Library of ``datasets`` to the root of a TID 1500 report built without one,
    right after its Procedure Reported items (where highdicom's MeasurementReport puts it)."""
    content = sr.ContentSequence
    if any(_code(item) == _IMAGE_LIBRARY for item in content):
        raise ValueError("the report already has an Image Library")
    at = max((i + 1 for i, item in enumerate(content) if _code(item) == _PROCEDURE_REPORTED), default=0)
    items = list(content)
    items.insert(at, image_library(datasets))
    # a plain sequence: highdicom's ContentSequence admits only its own content item classes
    sr[_CONTENT_SEQUENCE] = DataElement(_CONTENT_SEQUENCE, "SQ", items)
