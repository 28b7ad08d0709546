"""Synthetic brain-tumor MR and abdominal CT phantoms with ground truth.

Two named settings (:mod:`.settings`): ``default`` and ``hard`` (benchmark v2, docs/benchmark.md).

Needs numpy, scipy, nibabel, nilearn and pydicom only: never torch (the node's demo
uses these generators). Heavy submodules load lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "PhantomCase",
    "SETTINGS",
    "StudyInfo",
    "generate_case",
    "generate_brain_case",
    "generate_ct_case",
    "reorient",
    "reorient_case",
    "write_series",
    "write_study",
    "write_nnunet_dataset",
]

_LAZY = {
    "PhantomCase": ".case",
    "StudyInfo": ".dicom",
    "write_series": ".dicom",
    "write_study": ".dicom",
    "reorient": ".orientation",
    "reorient_case": ".orientation",
    "generate_brain_case": ".brain",
    "generate_ct_case": ".ct",
    "generate_case": ".settings",
    "SETTINGS": ".settings",
    "write_nnunet_dataset": ".nnunet_raw",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
