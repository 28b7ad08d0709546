"""Results: a model run's label map → DICOM SEG and a TID 1500 SR of segment volumes."""

from pacsnode.results.card import CardLabel, CodeValue, ResultCard, result_card
from pacsnode.results.seg import SegType, seg_series_description, segment_numbers, write_seg
from pacsnode.results.sr import write_sr
from pacsnode.results.volumes import segment_volumes_ml, voxel_volume_ml

__all__ = [
    "CardLabel",
    "CodeValue",
    "ResultCard",
    "SegType",
    "result_card",
    "seg_series_description",
    "segment_numbers",
    "segment_volumes_ml",
    "voxel_volume_ml",
    "write_seg",
    "write_sr",
]
