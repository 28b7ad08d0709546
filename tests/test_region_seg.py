"""A region-based (sigmoid) model's SEG: each region its own segment holding the region's union,
named and coded as the region, its FRACTIONAL planes taken from the region's own output channel,
its SR volume the union's (KiTS's regions_class_order [1, 3, 2])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from distillation.phantoms.dicom import StudyInfo, write_series
from pacsnode.inference.card import ModelCard
from pacsnode.results import segment_volumes_ml, write_seg

SHAPE = (4, 10, 12)
SPACING = (2.0, 1.0, 1.0)
SHA = "0" * 64


def _label(name: str, value: int, region: list[int], code: str) -> dict:
    return {"value": value, "name": name, "region": region,
            "category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"},
            "type": {"scheme": "SCT", "value": code, "meaning": name}}


CARD = ModelCard.from_dict({
    "schema": "pacsnode.model_card/1", "name": "kits-like", "version": "1", "activation": "sigmoid",
    "inputs": [{"name": "CT", "modality": "CT", "series_description": ".*"}],
    "target_spacing": list(SPACING), "patch_size": [4, 8, 8], "normalization": [{"scheme": "none"}],
    # output order = regions_class_order [1, 3, 2]: kidney painted 1, masses 3, tumor 2 (last)
    "labels": [_label("Kidney", 1, [1, 2, 3], "64033007"), _label("Masses", 3, [2, 3], "4147007"),
               _label("Tumor", 2, [2], "108369006")],
})


@pytest.fixture
def sources(tmp_path: Path) -> list:
    affine = np.diag([*SPACING, 1.0])[[0, 1, 2, 3]]
    image = np.random.default_rng(0).uniform(0, 100, SHAPE).astype(np.float32)
    paths = write_series(image, affine, tmp_path / "ct", modality="CT", series_description="CT",
                         study=StudyInfo.synthetic(3, "ct"), series_number=1)
    return [dcmread(p) for p in paths]


def _painted() -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[:, 1:9, 1:11] = 1   # kidney only
    labels[:, 3:7, 3:6] = 3    # cyst: masses but not tumor
    labels[:, 3:7, 6:9] = 2    # tumor
    return labels


def _segments(seg, sources) -> np.ndarray:
    uids = [ds.SOPInstanceUID for ds in sources]
    return seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2, 3],
                                             combine_segments=False)


def test_each_region_is_its_union(sources: list) -> None:
    labels = _painted()
    seg = write_seg(sources, labels, CARD, model_sha256=SHA)
    names = [(s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue) for s in seg.SegmentSequence]
    assert names == [("Kidney", "64033007"), ("Tumor", "108369006"), ("Masses", "4147007")]  # value order
    planes = _segments(seg, sources).astype(bool)
    assert np.array_equal(planes[..., 0], labels > 0)                    # kidney: everything
    assert np.array_equal(planes[..., 1], labels == 2)                   # tumor
    assert np.array_equal(planes[..., 2], np.isin(labels, [2, 3]))       # masses: cyst and tumor
    volumes = segment_volumes_ml(labels, CARD, spacing=SPACING)
    assert volumes == pytest.approx({1: (labels > 0).sum() * 2e-3, 2: (labels == 2).sum() * 2e-3,
                                     3: np.isin(labels, [2, 3]).sum() * 2e-3})


def test_fractional_planes_come_from_each_regions_output_channel(sources: list) -> None:
    labels = _painted()
    probabilities = np.stack([np.full(SHAPE, p, dtype=np.float32) for p in (0.9, 0.6, 0.3)])  # kidney, masses, tumor
    seg = write_seg(sources, labels, CARD, model_sha256=SHA, seg_type="fractional", probabilities=probabilities)
    planes = _segments(seg, sources)
    got = [float(planes[..., n].max()) for n in range(3)]  # segments in value order: kidney, tumor, masses
    assert got == pytest.approx([0.9, 0.3, 0.6], abs=1 / 255)
