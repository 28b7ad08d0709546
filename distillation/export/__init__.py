"""ONNX export of students and teachers with an embedded model card; optional int8."""

from distillation.export.card import (
    CHANNEL_SELECTORS,
    INTENDED_USE,
    LABEL_CODES,
    channel_entry,
    label_entry,
    make_card,
    validate_card,
)
from distillation.export.card_edits import edit_card, merge_card
from distillation.export.onnx_export import (
    METADATA_KEY,
    ExportReport,
    compare_onnx_torch,
    export_onnx,
    read_card,
    total_stride,
    write_card,
)
from distillation.export.quantize import (
    QuantizationReport,
    WindowReader,
    calibration_windows_from_dir,
    int8_report,
    quantize_int8,
    select_nodes,
)

__all__ = [
    "CHANNEL_SELECTORS",
    "INTENDED_USE",
    "LABEL_CODES",
    "METADATA_KEY",
    "ExportReport",
    "QuantizationReport",
    "WindowReader",
    "calibration_windows_from_dir",
    "channel_entry",
    "compare_onnx_torch",
    "edit_card",
    "export_onnx",
    "int8_report",
    "label_entry",
    "make_card",
    "merge_card",
    "quantize_int8",
    "read_card",
    "select_nodes",
    "total_stride",
    "validate_card",
    "write_card",
]
