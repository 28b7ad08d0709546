"""The postprocessing ``nnUNetv2_find_best_configuration`` chose, as model-card steps.

nnU-Net writes ``postprocessing.pkl`` (the functions and their kwargs, pickled) and
``postprocessing.json`` (the same with the functions' names) into the cross-validation folder
of the chosen model, ``crossval_results_folds_0_1_2_3_4/``. Each step is
``remove_all_but_largest_component_from_segmentation(labels_or_regions=...)``: a label, a region
(a tuple of labels) or a list of them whose union keeps only its largest component. The card's
``postprocessing.largest_component`` holds the same steps in the same order (a list = a union).
The pickle is read without importing nnU-Net: only that one function may be named in it.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pacsnode.errors import ModelError

__all__ = ["find_postprocessing", "read_postprocessing"]

SUPPORTED = "remove_all_but_largest_component_from_segmentation"
_MODULE = "nnunetv2.postprocessing.remove_connected_components"


class _Fn:
    def __init__(self, name: str) -> None:
        self.__name__ = name


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("nnunetv2."):
            return _Fn(name if module == _MODULE else f"{module}.{name}")
        if (module, name) in (("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                              ("numpy._core.multiarray", "scalar")):
            return super().find_class(module, name)
        raise ModelError(f"postprocessing.pkl may only name nnU-Net's postprocessing functions, got {module}.{name}")


def find_postprocessing(folder: Path, folds: Sequence[str]) -> Path | None:
    """postprocessing.json/.pkl beside the plans, or in the folds' ``crossval_results_folds_*`` folder."""
    candidates = [folder, folder / f"crossval_results_folds_{'_'.join(folds)}"]
    for place in candidates:
        for name in ("postprocessing.json", "postprocessing.pkl"):
            if (place / name).is_file():
                return place / name
    return None


def _step(value: Any, where: str, valid: set[int]) -> int | list[int]:
    items = value if isinstance(value, (list, tuple)) else [value]
    flat: list[int] = []
    for v in items:
        for x in (v if isinstance(v, (list, tuple)) else [v]):  # a list of regions is the union of them all
            if isinstance(x, bool) or int(x) != x or int(x) not in valid:
                raise ModelError(f"{where} must name the dataset's labels {sorted(valid)}, got {value!r}")
            if int(x) not in flat:
                flat.append(int(x))
    if not isinstance(value, (list, tuple)):
        return flat[0]
    return flat


def read_postprocessing(path: Path, label_values: Sequence[int]) -> list[int | list[int]]:
    """The card's ``largest_component`` steps from nnU-Net's postprocessing.json or .pkl."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            names, kwargs = data["postprocessing_fns"], data["postprocessing_kwargs"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{path} must be nnU-Net's postprocessing.json with postprocessing_fns and "
                             f"postprocessing_kwargs, got {type(exc).__name__}: {exc}") from None
    else:
        try:
            with path.open("rb") as f:
                fns, kwargs = _Unpickler(f).load()
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"{path} must be nnU-Net's postprocessing.pkl (functions, kwargs), got "
                             f"{type(exc).__name__}: {exc}") from None
        names = [getattr(fn, "__name__", repr(fn)) for fn in fns]
    if len(names) != len(kwargs):
        raise ModelError(f"{path.name} must give kwargs for each function, got {len(names)} functions and "
                         f"{len(kwargs)} kwargs")
    valid = {int(v) for v in label_values}
    steps: list[int | list[int]] = []
    for i, (name, kw) in enumerate(zip(names, kwargs, strict=True)):
        if name != SUPPORTED:
            raise ModelError(f"{path.name} postprocessing_fns[{i}] must be {SUPPORTED} (the only step nnU-Net's "
                             f"find_best_configuration chooses), got {name!r}")
        extra = sorted(set(kw) - {"labels_or_regions", "background_label"})
        if extra or int(kw.get("background_label", 0)) != 0:
            raise ModelError(f"{path.name} postprocessing_kwargs[{i}] must hold labels_or_regions (background 0), "
                             f"got {kw!r}")
        steps.append(_step(kw["labels_or_regions"], f"{path.name} postprocessing_kwargs[{i}].labels_or_regions",
                           valid))
    return steps
