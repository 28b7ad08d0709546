"""SEG and SR writers: dciodvfy-clean, read back with highdicom aligned with the source frames."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from test_results_support import BRAIN_CARD, SHA, dciodvfy

import pacsnode.results as results
from distillation.phantoms.dicom import StudyInfo, write_series
from pacsnode.errors import ResultsError
from pacsnode.results import (
    ResultCard,
    result_card,
    segment_volumes_ml,
    voxel_volume_ml,
    write_seg,
    write_sr,
)

SHAPE = (6, 16, 20)  # k, i, j
SPACING = (2.0, 1.5, 1.25)  # z, y, x mm
# Dicom3tools (2022) predates Label Map Segmentation Storage (DICOM 2024, Sup 243): it has no
# IOD for the SOP class, so that is its one error (the SEG has no segment 0 item it would misread).
LABELMAP_UNKNOWN_TO_DCIODVFY = ["Error - Information Object Not found"]


def _oblique_affine() -> np.ndarray:
    """(k, i, j, 1) → LPS: columns are slice, column and row directions, tilted 20° about x."""
    t = np.deg2rad(20.0)
    row = np.array([1.0, 0.0, 0.0])  # j
    col = np.array([0.0, np.cos(t), np.sin(t)])  # i
    normal = np.cross(row, col)  # k, so k increases along row x col
    a = np.eye(4)
    a[:3, 0], a[:3, 1], a[:3, 2] = normal * SPACING[0], col * SPACING[1], row * SPACING[2]
    a[:3, 3] = [-12.0, -10.0, 30.0]
    return a


AFFINE = _oblique_affine()


def _labels(with_label3: bool = False) -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[1:5, 3:12, 4:15] = 1
    labels[2:4, 5:9, 6:10] = 2
    if with_label3:
        labels[3, 6:8, 7:9] = 3
    return labels


def _series(tmp: Path, description: str, study: StudyInfo, number: int) -> list[Dataset]:
    rng = np.random.default_rng(number)
    image = rng.uniform(0, 500, size=SHAPE).astype(np.float32)
    paths = write_series(image, AFFINE, tmp / description, modality="MR", series_description=description,
                         study=study, series_number=number)
    return [dcmread(p) for p in paths]  # write_series returns the files in k order


@pytest.fixture
def study() -> StudyInfo:
    return StudyInfo.synthetic(7, "brain")


@pytest.fixture
def t1(tmp_path: Path, study: StudyInfo) -> list[Dataset]:
    return _series(tmp_path, "T1", study, 1)


def _probabilities(labels: np.ndarray) -> np.ndarray:
    """Softmax-like [K=4, k, i, j]: 0.8 on the predicted label, the rest shared."""
    p = np.full((4, *labels.shape), 0.2 / 3, dtype=np.float32)
    for v in range(4):
        p[v][labels == v] = 0.8
    return p


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("seg_type", ["binary", "fractional", "labelmap"])
def test_seg_validates_and_reads_back_aligned(tmp_path: Path, t1: list[Dataset], seg_type: str) -> None:
    labels = _labels()  # label 3 absent: its segment must still be described
    probs = _probabilities(labels) if seg_type == "fractional" else None
    seg = write_seg(t1, labels, BRAIN_CARD, model_sha256=SHA, seg_type=seg_type, probabilities=probs)
    path = _save(seg, tmp_path / "seg.dcm")

    errors, warnings = dciodvfy(path)
    if seg_type == "labelmap":
        assert errors == LABELMAP_UNKNOWN_TO_DCIODVFY, errors
    else:
        assert errors == [], errors
        assert warnings == [], warnings

    back = hd.seg.segread(path)
    assert back.segmentation_type.value == seg_type.upper()
    uids = [ds.SOPInstanceUID for ds in t1]
    if seg_type == "fractional":
        pixels = back.get_pixels_by_source_instance(uids)  # [k, i, j, segments], rescaled to 0..1
        np.testing.assert_allclose(pixels, np.moveaxis(probs[1:], 0, -1), atol=1 / 255)
        got = np.where(pixels.max(-1) > 0.5, pixels.argmax(-1) + 1, 0)
    else:
        got = back.get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(got, labels)

    # the same through highdicom's volume API, in the source's geometry
    volume = back.get_volume(combine_segments=seg_type != "fractional")
    source = hd.Volume(array=labels, affine=AFFINE, coordinate_system="PATIENT")
    aligned = volume.match_geometry(source)
    if seg_type == "fractional":
        np.testing.assert_allclose(aligned.array, np.moveaxis(probs[1:], 0, -1), atol=1 / 255)
    else:
        np.testing.assert_array_equal(aligned.array, labels)


def test_seg_describes_every_label_with_codes_colour_and_algorithm(t1: list[Dataset]) -> None:
    seg = write_seg(t1, _labels(), BRAIN_CARD, model_sha256=SHA)
    items = list(seg.SegmentSequence)
    assert [int(s.SegmentNumber) for s in items] == [1, 2, 3]
    assert [s.SegmentLabel for s in items] == ["Edema", "Necrotic core", "Enhancing tumor"]
    for item, label in zip(items, BRAIN_CARD["labels"], strict=True):
        cat, typ = item.SegmentedPropertyCategoryCodeSequence[0], item.SegmentedPropertyTypeCodeSequence[0]
        assert (cat.CodingSchemeDesignator, cat.CodeValue) == ("SCT", label["category"]["value"])
        assert (typ.CodingSchemeDesignator, typ.CodeValue) == ("SCT", label["type"]["value"])
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb() == tuple(
            label["color"]
        )
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        family = algo.AlgorithmFamilyCodeSequence[0]
        assert (family.CodingSchemeDesignator, family.CodeValue) == ("DCM", "123110")  # Artificial Intelligence
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("brain-tumor", "0.1.0")
        assert SHA in algo.AlgorithmParameters
    # the empty segment (label 3) still has its frames: one per source frame and segment
    assert int(seg.NumberOfFrames) == 3 * len(t1)
    assert seg.SeriesDescription == "AI SEG brain-tumor 0.1.0 - not for clinical use"
    assert len(seg.SeriesDescription) <= 64
    assert seg.Modality == "SEG"
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.StudyInstanceUID == t1[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == t1[0].FrameOfReferenceUID


def test_every_frame_has_one_derivation_reference_to_its_source(t1: list[Dataset]) -> None:
    seg = write_seg(t1, _labels(), BRAIN_CARD, model_sha256=SHA)
    by_uid = {ds.SOPInstanceUID: ds for ds in t1}
    seen: dict[int, set[str]] = {}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        derivation = frame.DerivationImageSequence
        assert len(derivation) == 1
        assert len(derivation[0].SourceImageSequence) == 1
        ref = derivation[0].SourceImageSequence[0]
        assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"  # source image for processing
        source = by_uid[ref.ReferencedSOPInstanceUID]
        np.testing.assert_allclose(
            [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in source.ImagePositionPatient], atol=1e-3,
        )
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        seen.setdefault(number, set()).add(ref.ReferencedSOPInstanceUID)
    assert seen == {n: set(by_uid) for n in (1, 2, 3)}
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [t1[0].SeriesInstanceUID]


def test_each_run_is_a_new_series(t1: list[Dataset]) -> None:
    a = write_seg(t1, _labels(), BRAIN_CARD, model_sha256=SHA)
    b = write_seg(t1, _labels(), BRAIN_CARD, model_sha256=SHA)
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.SeriesInstanceUID != t1[0].SeriesInstanceUID


def test_multi_series_model_references_every_input_series(tmp_path: Path, study: StudyInfo) -> None:
    series = [_series(tmp_path, name, study, n) for n, name in enumerate(["T1", "T1ce", "T2", "FLAIR"], 1)]
    reference, others = series[0], [ds for s in series[1:] for ds in s]
    seg = write_seg(reference, _labels(True), BRAIN_CARD, model_sha256=SHA, further_source_datasets=others)
    path = _save(seg, tmp_path / "seg.dcm")
    errors, warnings = dciodvfy(path)
    assert errors == [], errors
    assert warnings == [], warnings
    referenced = {s.SeriesInstanceUID: len(s.ReferencedInstanceSequence) for s in seg.ReferencedSeriesSequence}
    assert referenced == {s[0].SeriesInstanceUID: len(s) for s in series}
    # the pixel data stays aligned with the reference series
    back = hd.seg.segread(path)
    got = back.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in reference], combine_segments=True)
    np.testing.assert_array_equal(got, _labels(True))


def test_sr_reports_each_segment_volume_in_ml(tmp_path: Path, t1: list[Dataset]) -> None:
    labels = _labels()
    seg = write_seg(t1, labels, BRAIN_CARD, model_sha256=SHA)
    sr = write_sr(seg, labels, BRAIN_CARD, t1, model_sha256=SHA, affine=AFFINE)
    path = _save(sr, tmp_path / "sr.dcm")
    errors, warnings = dciodvfy(path)
    assert errors == [], errors
    assert warnings == [], warnings

    back = hd.sr.srread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert "AI SR brain-tumor 0.1.0" in back.SeriesDescription
    groups = back.content.get_volumetric_roi_measurement_groups()
    voxel_ml = np.prod(SPACING) / 1000.0
    got = {}
    for group in groups:
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        (number,) = ref.referenced_segment_numbers
        (measurement,) = group.get_measurements()
        assert measurement.name.value == "118565006"  # SCT Volume
        assert (measurement.unit.scheme_designator, measurement.unit.value) == ("UCUM", "ml")
        got[number] = measurement.value
    expected = {n: float((labels == v).sum()) * voxel_ml for n, v in ((1, 1), (2, 2), (3, 3))}
    assert got == pytest.approx(expected, abs=1e-6)
    assert got[3] == 0.0  # the empty segment is reported too
    # the observer is the device (the model), not a person
    items = {it.ConceptNameCodeSequence[0].CodeValue: it for it in back.ContentSequence}
    assert items["121005"].ConceptCodeSequence[0].CodeValue == "121007"  # Observer Type = Device
    assert items["121013"].TextValue == "brain-tumor 0.1.0"  # Device Observer Name
    assert "121008" not in items  # no Person Observer Name


def test_volumes_from_affine_and_spacing_agree() -> None:
    labels = _labels(True)
    assert voxel_volume_ml(AFFINE) == pytest.approx(np.prod(SPACING) / 1000)
    assert segment_volumes_ml(labels, BRAIN_CARD, affine=AFFINE) == pytest.approx(
        segment_volumes_ml(labels, BRAIN_CARD, spacing=SPACING)
    )
    with pytest.raises(ResultsError, match=r"exactly one of affine .* or spacing .*, got neither"):
        voxel_volume_ml()


def test_card_is_read_from_mapping_and_from_c_model_card() -> None:
    rc = result_card(BRAIN_CARD)
    assert isinstance(rc, ResultCard)
    assert [lb.value for lb in rc.labels] == [1, 2, 3]
    import json

    from pacsnode.inference.card import ModelCard

    full = {
        **BRAIN_CARD,
        "inputs": [{"name": "T1", "modality": "MR", "series_description": "^T1$"}],
        "target_spacing": [1.0, 1.0, 1.0],
        "patch_size": [32, 32, 32],
        "normalization": [{"scheme": "zscore", "use_nonzero_mask": True}],
    }
    card = ModelCard.from_json(json.dumps(full))  # the node's own card: the results read it alike
    assert result_card(card) == rc


@pytest.mark.parametrize(
    ("kwargs", "labels", "message"),
    [
        ({}, np.zeros((5, 16, 20), np.uint8), r"labels must match the source series \(slices, rows, columns\) = \(6, 16, 20\), got \(5, 16, 20\)"),
        ({}, np.full(SHAPE, 7, np.uint8), r"labels must hold only 0 and the card's label values \[1, 2, 3\], got \[7\]"),
        ({}, np.zeros(SHAPE, np.float32), r"labels must be an integer array, got dtype float32"),
        ({"seg_type": "fractional"}, np.zeros(SHAPE, np.uint8), r"seg_type 'fractional' needs probabilities"),
        ({"seg_type": "fractional", "probabilities": np.zeros((2, *SHAPE), np.float32)}, np.zeros(SHAPE, np.uint8),
         r"probabilities must have 4 channels \(background \+ labels\) or 3 \(one per label\), got 2"),
        ({"model_sha256": "abc"}, np.zeros(SHAPE, np.uint8), r"model_sha256 must be 64 hex digits, got 'abc'"),
    ],
)
def test_bad_input_is_a_results_error(t1: list[Dataset], kwargs: dict, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ResultsError, match=message):
        write_seg(t1, labels, BRAIN_CARD, **{"model_sha256": SHA, **kwargs})


def test_bad_card_names_the_field(t1: list[Dataset]) -> None:
    card = {**BRAIN_CARD, "labels": [{"value": 1, "name": "Edema"}]}
    with pytest.raises(ResultsError, match=r"model card labels\[0\] must have a 'category' field, got none"):
        write_seg(t1, _labels(), card, model_sha256=SHA)


def test_public_surface_is_deliberate() -> None:
    assert sorted(results.__all__) == [
        "CardLabel", "CodeValue", "ResultCard", "SegType", "result_card", "seg_series_description",
        "segment_numbers", "segment_volumes_ml", "voxel_volume_ml", "write_seg", "write_sr",
    ]


@pytest.mark.parametrize("enhanced", [False, True])
def test_seg_from_a_volume_read_by_pacsnode_volume(tmp_path: Path, study: StudyInfo, enhanced: bool) -> None:
    """The hand-off the node makes: read_series → Volume.datasets (+ frames) → write_seg."""
    from pacsnode.volume import read_series

    k = np.arange(SHAPE[0])[:, None, None]
    image = (np.indices(SHAPE).sum(0) * 10 + k * 100).astype(np.float32)  # asymmetric along every axis
    paths = write_series(image, AFFINE, tmp_path / "src", modality="MR", series_description="T1",
                         study=study, enhanced=enhanced, orientation="sagittal", flip_slices=True)
    vol = read_series(paths)
    labels = np.zeros(vol.shape, np.uint8)
    labels[vol.array > np.percentile(vol.array, 60)] = 1
    labels[vol.array > np.percentile(vol.array, 90)] = 3
    frames = [f for _, f in vol.frames] if enhanced else None
    seg = write_seg(vol.datasets, labels, BRAIN_CARD, model_sha256=SHA, source_frames=frames)
    path = _save(seg, tmp_path / "seg.dcm")
    errors, _ = dciodvfy(path)
    assert errors == [], errors
    back = hd.seg.segread(path)
    if enhanced:
        got = back.get_pixels_by_source_frame(vol.datasets[0].SOPInstanceUID, frames, combine_segments=True)
    else:
        got = back.get_pixels_by_source_instance([d.SOPInstanceUID for d in vol.datasets], combine_segments=True)
    np.testing.assert_array_equal(got, labels)
    aligned = back.get_volume(combine_segments=True).match_geometry(
        hd.Volume(array=labels, affine=vol.affine, coordinate_system="PATIENT")
    )
    np.testing.assert_array_equal(aligned.array, labels)
