"""IHE AI Results (AIR) content checker for the SEGs and SRs the node writes.

:data:`REQUIREMENTS` is the requirement table (the same rows as docs/air.md, where each has its
status and the reason when it does not apply); :func:`check_seg` / :func:`check_sr` return the
violations of one object as ``"ID: what is wrong"`` lines. The table was written from our
knowledge of the AIR supplement (Rev. 1.x, Trial Implementation) and of DICOM PS3.3/PS3.16
(TID 1500); the supplement itself could not be fetched where it was written (docs/air.md).

As a pytest plugin (its hooks are imported by tests/conftest.py), it checks every SEG and SR
file the test session wrote under its base temporary directory (results folders, PACS
storage, files tests save) when the session ends, and fails the session naming the file and
the requirement when one is not met.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.filereader import read_file_meta_info

SEG_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.34"}
# Enhanced CT, MR, PET: the Image Library is not written for them (docs/air.md, AIR-SR-11)
_ENHANCED = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.128.1"}


@dataclass(frozen=True)
class Requirement:
    id: str
    applies: str  # SEG, SR or SEG+SR
    text: str


REQUIREMENTS = (
    Requirement("AIR-SEG-1", "SEG", "Segmentation results are DICOM Segmentation objects, BINARY or FRACTIONAL"),
    Requirement("AIR-SEG-2", "SEG", "in the study of the source images: Study Instance UID and patient/study "
                                    "attributes of the source, a new series of Modality SEG"),
    Requirement("AIR-SEG-3", "SEG", "the source series and images are referenced (Referenced Series Sequence; "
                                    "per frame a Derivation Image with its Source Image)"),
    Requirement("AIR-SEG-4", "SEG", "the frame of reference of the source (Frame of Reference UID)"),
    Requirement("AIR-SEG-5", "SEG", "each segment identifies the algorithm: Segment Algorithm Type AUTOMATIC, "
                                    "Segment Algorithm Name, Segmentation Algorithm Identification (family, "
                                    "name, version)"),
    Requirement("AIR-SEG-6", "SEG", "each segment has coded Segmented Property Category and Type (SNOMED CT "
                                    "or DCM) and a Segment Label"),
    Requirement("AIR-SEG-7", "SEG", "each segment has a Recommended Display CIELab Value"),
    Requirement("AIR-SEG-8", "SEG", "the equipment that made it is identified: Manufacturer, Manufacturer's "
                                    "Model Name, Software Versions, Device Serial Number"),
    Requirement("AIR-SR-1", "SR", "measurements are a Comprehensive 3D SR with TID 1500 Measurement Report "
                                  "(title 126000 DCM)"),
    Requirement("AIR-SR-2", "SR", "in the study of the source images, its evidence (Current Requested "
                                  "Procedure Evidence) lists the SEG and the source series"),
    Requirement("AIR-SR-3", "SR", "the observer context is a device: Observer Type Device, Device Observer "
                                  "UID, Name, Manufacturer and Model Name; no person observer"),
    Requirement("AIR-SR-4", "SR", "Procedure Reported and the Language of the content are coded"),
    Requirement("AIR-SR-5", "SR", "each measurement group has a Tracking Identifier and a Tracking Unique "
                                  "Identifier"),
    Requirement("AIR-SR-6", "SR", "each measurement group references its region as a SEG segment (Referenced "
                                  "Segment with the SEG instance and segment number) and its Source Series "
                                  "for Segmentation"),
    Requirement("AIR-SR-7", "SR", "each measurement group has a coded Finding and Finding Category"),
    Requirement("AIR-SR-8", "SR", "the algorithm is identified in each group and measurement (Algorithm Name "
                                  "and Version)"),
    Requirement("AIR-SR-9", "SR", "measurements are numeric with UCUM units"),
    Requirement("AIR-SR-10", "SR", "an AI result not verified by a person: Verification Flag UNVERIFIED"),
    Requirement("AIR-SR-11", "SR", "the Image Library lists the source images"),
    Requirement("AIR-SR-12", "SEG+SR", "the SR's referenced segments exist in the SEG it references, with the "
                                       "same finding codes, and both objects are in one study"),
)


def _code_ok(seq: Iterable[Dataset] | None, schemes: set[str] | None = None) -> bool:
    items = list(seq or [])
    return len(items) == 1 and all(items[0].get(k) for k in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")) \
        and (schemes is None or items[0].CodingSchemeDesignator in schemes)


def check_seg(ds: Dataset) -> list[str]:
    """The AIR violations of one SEG (empty when it meets every applicable requirement)."""
    out: list[str] = []
    if ds.SOPClassUID not in SEG_CLASSES or ds.get("SegmentationType") not in {"BINARY", "FRACTIONAL"}:
        out.append(f"AIR-SEG-1: SOP class {ds.SOPClassUID}, Segmentation Type {ds.get('SegmentationType')!r}")
    refs = {str(s.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID) for i in s.ReferencedInstanceSequence}
            for s in ds.get("ReferencedSeriesSequence", [])}
    if ds.get("Modality") != "SEG" or not ds.get("StudyInstanceUID") or ds.SeriesInstanceUID in refs \
            or "PatientID" not in ds:
        out.append("AIR-SEG-2: Modality SEG, a study and patient, and a series of its own are required")
    frames = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    referenced = set().union(*refs.values()) if refs else set()
    bad = [n for n, f in enumerate(frames, start=1)
           if not any(str(src.ReferencedSOPInstanceUID) in referenced
                      for d in f.get("DerivationImageSequence", []) for src in d.get("SourceImageSequence", []))]
    if not refs or not frames or bad:
        out.append(f"AIR-SEG-3: {len(refs)} referenced series; frames without a referenced source image: {bad[:5]}")
    if not ds.get("FrameOfReferenceUID"):
        out.append("AIR-SEG-4: no Frame of Reference UID")
    for seg in ds.get("SegmentSequence", []):
        n = seg.get("SegmentNumber")
        if n == 0 and ds.get("SegmentationType") == "LABELMAP":
            continue  # a label map's background segment (Label Map Segmentation, outside AIR 1.x)
        algo = list(seg.get("SegmentationAlgorithmIdentificationSequence", []))
        if seg.get("SegmentAlgorithmType") != "AUTOMATIC" or not seg.get("SegmentAlgorithmName") or len(algo) != 1 \
                or not _code_ok(algo[0].get("AlgorithmFamilyCodeSequence")) \
                or not algo[0].get("AlgorithmName") or not algo[0].get("AlgorithmVersion"):
            out.append(f"AIR-SEG-5: segment {n} does not identify its algorithm")
        if not (_code_ok(seg.get("SegmentedPropertyCategoryCodeSequence"), {"SCT", "DCM"})
                and _code_ok(seg.get("SegmentedPropertyTypeCodeSequence"), {"SCT", "DCM"}) and seg.get("SegmentLabel")):
            out.append(f"AIR-SEG-6: segment {n} lacks coded category/type or a label")
        if len(seg.get("RecommendedDisplayCIELabValue") or []) != 3:
            out.append(f"AIR-SEG-7: segment {n} has no Recommended Display CIELab Value")
    if not ds.get("SegmentSequence"):
        out.append("AIR-SEG-5: no segments")
    missing = [k for k in ("Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber")
               if not ds.get(k)]
    if missing:
        out.append(f"AIR-SEG-8: missing {missing}")
    return out


def _numbers(ref: Dataset) -> list[int]:
    v = ref.get("ReferencedSegmentNumber")
    return [] if v is None else [int(x) for x in (v if isinstance(v, list | tuple) or hasattr(v, "__iter__") else [v])]


def _items(node: Dataset) -> list[Dataset]:
    return list(node.get("ContentSequence", []))


def _named(node: Dataset, code: str) -> list[Dataset]:
    return [it for it in _items(node) if it.ConceptNameCodeSequence[0].CodeValue == code]


def _algorithm(node: Dataset) -> bool:
    return bool(_named(node, "111001") and _named(node, "111003")
                and _named(node, "111001")[0].get("TextValue") and _named(node, "111003")[0].get("TextValue"))


def check_sr(ds: Dataset, seg: Dataset | None = None) -> list[str]:
    """The AIR violations of one SR; with ``seg`` (the SEG it references) the cross-object rule too."""
    out: list[str] = []
    tmpl = list(ds.get("ContentTemplateSequence", []))
    title = list(ds.get("ConceptNameCodeSequence", []))
    if ds.SOPClassUID not in SR_CLASSES or not tmpl or tmpl[0].get("TemplateIdentifier") != "1500" \
            or not title or title[0].CodeValue != "126000":
        out.append("AIR-SR-1: not a Comprehensive 3D SR with TID 1500 Imaging Measurement Report")
    evidence = {str(s.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID) for i in s.ReferencedSOPSequence}
                for st in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                for s in st.ReferencedSeriesSequence if str(st.StudyInstanceUID) == str(ds.StudyInstanceUID)}
    if len(evidence) < 2:
        out.append(f"AIR-SR-2: evidence in the SR's study lists {len(evidence)} series, the SEG's and the source's needed")
    observer = {it.ConceptNameCodeSequence[0].CodeValue: it for it in _items(ds) if it.RelationshipType == "HAS OBS CONTEXT"}
    device = observer.get("121005")
    if device is None or device.ConceptCodeSequence[0].CodeValue != "121007" \
            or not all(k in observer for k in ("121012", "121013", "121014", "121015")) or "121008" in observer:
        out.append(f"AIR-SR-3: observer context {sorted(observer)} is not a device with UID, name, manufacturer, model")
    if not _named(ds, "121058") or not _named(ds, "121049"):
        out.append("AIR-SR-4: Procedure Reported or Language missing")
    groups = [g for c in _named(ds, "126010") for g in _named(c, "125007")]
    if not groups:
        out.append("AIR-SR-6: no measurement groups")
    referenced: list[tuple[str, int, tuple[str, str]]] = []
    for n, g in enumerate(groups, start=1):
        if not (_named(g, "112039") and _named(g, "112040")):
            out.append(f"AIR-SR-5: group {n} lacks Tracking Identifier or UID")
        segs = _named(g, "121191")
        refs = [r for s in segs for r in s.get("ReferencedSOPSequence", [])]
        if len(refs) != 1 or not _numbers(refs[0]) or not _named(g, "121232") \
                or not any(str(refs[0].ReferencedSOPInstanceUID) in uids for uids in evidence.values()):
            out.append(f"AIR-SR-6: group {n} does not reference one SEG segment in its evidence with its source series")
        finding = _named(g, "121071")
        if not (finding and _code_ok(finding[0].ConceptCodeSequence) and _named(g, "276214006")):
            out.append(f"AIR-SR-7: group {n} lacks a coded Finding or Finding Category")
        nums = [it for it in _items(g) if it.ValueType == "NUM"]
        if not _algorithm(g) or not nums or not all(_algorithm(x) for x in nums):
            out.append(f"AIR-SR-8: group {n} or its measurements lack Algorithm Name/Version")
        for x in nums:
            mv = x.get("MeasuredValueSequence", [None])[0]
            if mv is None or not _code_ok(mv.get("MeasurementUnitsCodeSequence"), {"UCUM"}) or mv.get("NumericValue") is None:
                out.append(f"AIR-SR-9: group {n} measurement without a value in UCUM units")
        if refs and finding:
            f = finding[0].ConceptCodeSequence[0]
            for number in _numbers(refs[0]):
                referenced.append((str(refs[0].ReferencedSOPInstanceUID), int(number),
                                   (str(f.CodeValue), str(f.CodingSchemeDesignator))))
    if ds.get("VerificationFlag") != "UNVERIFIED":
        out.append(f"AIR-SR-10: Verification Flag {ds.get('VerificationFlag')!r}")
    library = [e for c in _named(ds, "111028") for e in _items(c)]
    enhanced = any(str(r.ReferencedSOPClassUID) in _ENHANCED
                   for st in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                   for s in st.ReferencedSeriesSequence for r in s.ReferencedSOPSequence)
    if not library and not enhanced:
        out.append("AIR-SR-11: no Image Library entries")
    if seg is not None:
        types = {int(s.SegmentNumber): (str(s.SegmentedPropertyTypeCodeSequence[0].CodeValue),
                                        str(s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator))
                 for s in seg.SegmentSequence}
        for uid, number, code in referenced:
            if uid == str(seg.SOPInstanceUID) and types.get(number) != code:
                out.append(f"AIR-SR-12: segment {number} is {types.get(number)} in the SEG, {code} in the SR")
        if str(seg.StudyInstanceUID) != str(ds.StudyInstanceUID):
            out.append("AIR-SR-12: the SEG and the SR are in different studies")
    return out


# --- the session plugin ---------------------------------------------------------------------

_FOUND: dict[str, list[str]] = {}


def _results(root: Path) -> tuple[list[tuple[Path, Dataset]], list[tuple[Path, Dataset]]]:
    segs, srs = [], []
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                with path.open("rb") as fh:
                    fh.seek(128)
                    if fh.read(4) != b"DICM":
                        continue
                sop_class = str(read_file_meta_info(path).get("MediaStorageSOPClassUID", ""))
                if sop_class in SEG_CLASSES:
                    segs.append((path, dcmread(path, stop_before_pixels=True)))
                elif sop_class in SR_CLASSES:
                    srs.append((path, dcmread(path)))
            except Exception:  # noqa: BLE001, S112 - a file that vanished or is not DICOM is not a result
                continue
    return segs, srs


def check_tree(root: Path) -> tuple[int, int, dict[str, list[str]]]:
    """Check every SEG and SR under ``root``: (SEGs, SRs, violations by file). LABELMAP SEGs (outside
    AIR 1.x, not the default) are checked for everything but AIR-SEG-1."""
    segs, srs = _results(root)
    by_uid = {str(ds.SOPInstanceUID): ds for _, ds in segs}
    bad: dict[str, list[str]] = {}
    for path, ds in segs:
        problems = [p for p in check_seg(ds) if not (p.startswith("AIR-SEG-1") and ds.get("SegmentationType") == "LABELMAP")]
        if problems:
            bad[str(path)] = problems
    for path, ds in srs:
        seg_uid = next((str(r.ReferencedSOPInstanceUID) for st in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                        for s in st.ReferencedSeriesSequence for r in s.ReferencedSOPSequence
                        if str(r.ReferencedSOPClassUID) in SEG_CLASSES), "")
        problems = check_sr(ds, by_uid.get(seg_uid))
        if problems:
            bad[str(path)] = problems
    return len(segs), len(srs), bad


def pytest_sessionfinish(session, exitstatus) -> None:  # type: ignore[no-untyped-def]
    factory = getattr(session.config, "_tmp_path_factory", None)
    root = getattr(factory, "_basetemp", None)
    if root is None or not Path(root).is_dir():
        return
    n_seg, n_sr, bad = check_tree(Path(root))
    _FOUND.update({"counts": [str(n_seg), str(n_sr)], **bad})
    if bad and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if "counts" not in _FOUND:
        return
    n_seg, n_sr = _FOUND["counts"]
    bad = {k: v for k, v in _FOUND.items() if k != "counts"}
    terminalreporter.section("IHE AIR content (tests/air_check.py)")
    terminalreporter.write_line(f"checked {n_seg} SEG and {n_sr} SR files the session wrote: "
                                + ("all meet the applicable requirements" if not bad else f"{len(bad)} do not"))
    for path, problems in bad.items():
        for p in problems:
            terminalreporter.write_line(f"{path}: {p}", red=True)
