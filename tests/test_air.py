"""IHE AI Results (AIR): the node's SEG and SR meet the requirement table of tests/air_check.py
for each kind of acquisition the suite writes (classic MR, Enhanced multi-frame MR, CT,
BINARY and FRACTIONAL), the checker catches each kind of violation, and docs/air.md lists
exactly the table's requirements. (The same checker also runs, when the session ends, on every
SEG and SR file any test wrote: tests/conftest.py.)"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import pytest
from air_check import REQUIREMENTS, check_seg, check_sr, check_tree
from conftest import REPO
from pydicom import Dataset, dcmread
from test_results import AFFINE, SHAPE
from test_results_support import BRAIN_CARD, SHA

from distillation.phantoms.dicom import StudyInfo, write_series
from pacsnode.results import write_seg, write_sr


def _acquisition(tmp: Path, modality: str, enhanced: bool) -> list[Dataset]:
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 500, size=SHAPE).astype(np.float32)
    study = StudyInfo.synthetic(11, "brain" if modality == "MR" else "ct")
    paths = write_series(image, AFFINE, tmp / "src", modality=modality, series_description="AX",
                         study=study, enhanced=enhanced)
    return [dcmread(p) for p in paths]


def _results(sources: list[Dataset], seg_type: str = "binary") -> tuple[Dataset, Dataset, np.ndarray]:
    frames = int(sources[0].get("NumberOfFrames", 1) or 1) if len(sources) == 1 else len(sources)
    labels = np.zeros((frames, int(sources[0].Rows), int(sources[0].Columns)), np.uint8)
    labels[1:4, 3:10, 4:12] = 1
    labels[2:3, 5:8, 6:9] = 2
    probs = None
    if seg_type == "fractional":
        probs = np.stack([(labels == v).astype(np.float32) for v in (0, 1, 2, 3)])
    seg = write_seg(sources, labels, BRAIN_CARD, model_sha256=SHA, seg_type=seg_type, probabilities=probs)
    sr = write_sr(seg, labels, BRAIN_CARD, sources, model_sha256=SHA, affine=AFFINE)
    return seg, sr, labels


@pytest.mark.parametrize("modality,enhanced,seg_type", [
    ("MR", False, "binary"), ("MR", True, "binary"), ("CT", False, "binary"), ("MR", False, "fractional")])
def test_every_acquisition_meets_air(tmp_path: Path, modality: str, enhanced: bool, seg_type: str) -> None:
    sources = _acquisition(tmp_path, modality, enhanced)
    seg, sr, _ = _results(sources, seg_type)
    assert check_seg(seg) == []
    assert check_sr(sr, seg) == []
    # the study of the source: same study and patient, a series of its own (AIR-SEG-2, AIR-SR-2)
    for result in (seg, sr):
        assert (result.StudyInstanceUID, result.PatientID, result.AccessionNumber) == (
            sources[0].StudyInstanceUID, sources[0].PatientID, sources[0].AccessionNumber)
        assert result.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert seg.SeriesInstanceUID != sr.SeriesInstanceUID
    # the same model is the same Device Observer in every report
    again = write_sr(seg, np.zeros((1,), np.uint8), BRAIN_CARD, sources, model_sha256=SHA,
                     volumes_ml={1: 0.0, 2: 0.0, 3: 0.0})
    uid = {it.ConceptNameCodeSequence[0].CodeValue: it for it in sr.ContentSequence}["121012"].UID
    assert {it.ConceptNameCodeSequence[0].CodeValue: it for it in again.ContentSequence}["121012"].UID == uid


def _named(node: Dataset, code: str) -> list[Dataset]:
    return [it for it in node.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == code]


def test_the_checker_names_each_violation(tmp_path: Path) -> None:
    sources = _acquisition(tmp_path, "MR", False)
    seg, sr, _ = _results(sources)

    bad = copy.deepcopy(seg)
    del bad.SegmentSequence[0].SegmentAlgorithmName
    del bad.SegmentSequence[1].RecommendedDisplayCIELabValue
    bad.SegmentSequence[2].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator = "99LOCAL"
    del bad.DeviceSerialNumber
    assert check_seg(bad) == [
        "AIR-SEG-5: segment 1 does not identify its algorithm",
        "AIR-SEG-7: segment 2 has no Recommended Display CIELab Value",
        "AIR-SEG-6: segment 3 lacks coded category/type or a label",
        "AIR-SEG-8: missing ['DeviceSerialNumber']",
    ]
    frames = copy.deepcopy(seg)
    del frames.PerFrameFunctionalGroupsSequence[2].DerivationImageSequence
    assert check_seg(frames) == ["AIR-SEG-3: 1 referenced series; frames without a referenced source image: [3]"]

    bad_sr = copy.deepcopy(sr)
    bad_sr.VerificationFlag = "VERIFIED"
    observer = _named(bad_sr, "121005")[0]
    observer.ConceptCodeSequence[0].CodeValue = "121006"  # Person
    group = _named(_named(bad_sr, "126010")[0], "125007")[0]
    group.ContentSequence = [it for it in group.ContentSequence
                             if it.ConceptNameCodeSequence[0].CodeValue != "112040"]
    assert check_sr(bad_sr) == [
        "AIR-SR-3: observer context ['121005', '121012', '121013', '121014', '121015'] is not a device with UID, "
        "name, manufacturer, model",
        "AIR-SR-5: group 1 lacks Tracking Identifier or UID",
        "AIR-SR-10: Verification Flag 'VERIFIED'",
    ]
    other = copy.deepcopy(seg)
    other.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue = "12345"
    assert check_sr(sr, other) == ["AIR-SR-12: segment 1 is ('12345', 'SCT') in the SEG, ('79654002', 'SCT') in the SR"]


def test_the_session_scan_finds_results_on_disk_and_reports_a_bad_one(tmp_path: Path) -> None:
    sources = _acquisition(tmp_path, "MR", False)
    seg, sr, _ = _results(sources)
    sr.VerificationFlag = "VERIFIED"
    # outside the session's temporary tree, or the session scan would (rightly) fail the run
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        seg.save_as(out / "seg.dcm", enforce_file_format=True)
        sr.save_as(out / "sr", enforce_file_format=True)  # PACS storage names files without suffix
        (out / "notes.txt").write_text("not DICOM")
        n_seg, n_sr, bad = check_tree(out)
        assert (n_seg, n_sr) == (1, 1)
        assert bad == {str(out / "sr"): ["AIR-SR-10: Verification Flag 'VERIFIED'"]}


def test_docs_list_every_requirement_with_a_status() -> None:
    text = (REPO / "docs" / "air.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| AIR-")]
    ids = [row.split("|")[1].strip() for row in rows]
    assert [r.id for r in REQUIREMENTS] == [i for i in ids if not i.startswith("AIR-NA")]
    for row in rows:
        status = row.split("|")[4].strip()
        assert status.startswith(("met", "not applicable")), row


def test_a_card_without_colours_still_gets_recommended_display_colours(tmp_path: Path) -> None:
    import highdicom as hd

    from pacsnode.results.seg import DEFAULT_COLORS

    card = copy.deepcopy(BRAIN_CARD)
    for label in card["labels"]:
        label.pop("color", None)
    sources = _acquisition(tmp_path, "MR", False)
    labels = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns)), np.uint8)
    labels[1:3, 2:6, 2:6] = 1
    seg = write_seg(sources, labels, card, model_sha256=SHA)
    assert check_seg(seg) == []
    got = [hd.color.CIELabColor.from_dicom_value(s.RecommendedDisplayCIELabValue).to_rgb() for s in seg.SegmentSequence]
    assert [tuple(abs(a - b) <= 1 for a, b in zip(g, want, strict=True)) for g, want in
            zip(got, DEFAULT_COLORS, strict=False)] == [(True, True, True)] * len(card["labels"])
