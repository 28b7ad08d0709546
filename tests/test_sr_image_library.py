"""The SR's Image Library built by copying highdicom's entry equals highdicom's own, image for image."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from distillation.phantoms.dicom import StudyInfo, write_series
from pacsnode.results.image_library import image_library, insert_image_library


def _series(tmp: Path, name: str, modality: str, affine: np.ndarray, study: StudyInfo,
            number: int, shape: tuple[int, int, int] = (6, 9, 7)) -> list[Dataset]:
    rng = np.random.default_rng(number)
    files = write_series(rng.normal(100, 10, shape).astype(np.float32), affine, tmp / name, modality=modality,
                         series_description=name, study=study, series_number=number)
    return [dcmread(f, stop_before_pixels=True) for f in files]


def _oblique() -> np.ndarray:
    a = np.deg2rad(17.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8371, 0.91, 1.2345])
    affine[:3, 3] = [-101.3, 7.77, -33.333333]
    return affine


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    tmp = tmp_path_factory.mktemp("library")
    study = StudyInfo.synthetic(1)
    mr = _series(tmp, "t1", "MR", np.diag([1.0, 1.0, 2.0, 1.0]), study, 1)
    for i, ds in enumerate(mr):  # some slices say their spacing, some do not: two kinds in one group
        if i % 2:
            ds.SpacingBetweenSlices = 2.0
    oblique = _series(tmp, "flair", "MR", _oblique(), study, 2)
    other_frame = dataclasses.replace(study, frame_of_reference_uid=generate_uid())  # a third group
    ct = _series(tmp, "ct", "CT", np.diag([0.7, 0.7, 1.5, 1.0]), other_frame, 3, shape=(5, 8, 8))
    return [*mr, *oblique, *ct]


def test_equals_highdicoms_library(sources: list[Dataset]) -> None:
    ours = image_library(sources)
    theirs = hd.sr.ImageLibrary(sources)[0]
    assert ours.to_json_dict() == theirs.to_json_dict()
    entries = [e for g in ours.ContentSequence for e in g.ContentSequence if e.ValueType == "IMAGE"]
    assert [e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for e in entries] == \
        [d.SOPInstanceUID for d in sources]


def test_changing_an_entry_leaves_the_others(sources: list[Dataset]) -> None:
    library = image_library(sources[:3])
    first, second = [e for e in library.ContentSequence[0].ContentSequence if e.ValueType == "IMAGE"][:2]
    first.ContentSequence[0].ConceptCodeSequence[0].CodeMeaning = "changed"
    first.ContentSequence[2].MeasuredValueSequence[0].NumericValue = "999"
    assert second.ContentSequence[0].ConceptCodeSequence[0].CodeMeaning != "changed"
    assert second.ContentSequence[2].MeasuredValueSequence[0].NumericValue != 999


def test_inserted_where_highdicom_puts_it(sources: list[Dataset]) -> None:
    kw = dict(observation_context=hd.sr.ObservationContext(),
              procedure_reported=hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure"),
              imaging_measurements=[hd.sr.MeasurementsAndQualitativeEvaluations(
                  tracking_identifier=hd.sr.TrackingIdentifier(uid="1.2.3.4", identifier="x"))])
    with_library = hd.sr.MeasurementReport(referenced_images=sources, **kw)[0]
    without = hd.sr.MeasurementReport(**kw)[0]
    insert_image_library(without, sources)
    assert without.to_json_dict() == with_library.to_json_dict()
    with pytest.raises(ValueError, match="already has an Image Library"):
        insert_image_library(without, sources)
