"""What of an nnU-Net v2 plans.json the node reproduces, and the refusal (naming the key) for the rest.

The node preprocesses as nnU-Net's ``DefaultPreprocessor`` does with the default resampling
(``resample_data_or_seg_to_shape``: images order 3, logits order 1, order 0 along a separate
low-resolution axis chosen automatically with the anisotropy threshold 3) and reads volumes in
voxel order as ``SimpleITKIO`` and ``NibabelIO`` do. A plans entry that would make nnU-Net do
something else is refused at import, never ignored: the message names the key, the value and
what the node implements.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pacsnode.errors import ModelError

__all__ = ["check_plans", "READERS"]

READERS = ("SimpleITKIO", "NibabelIO")
_RESAMPLING = "resample_data_or_seg_to_shape"
_EXPECTED = {
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
}
_THRESHOLD = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD, pacsnode.inference.preprocessing's as well


def _refuse(key: str, value: Any, valid: str) -> ModelError:
    return ModelError(f"plans.json {key} must be what the node implements ({valid}), got {value!r}; "
                      "the node refuses the model rather than predict differently from nnU-Net")


def check_plans(plans: Mapping[str, Any], cfg: Mapping[str, Any], configuration: str) -> None:
    """Refuse (``ModelError`` naming the key) whatever in ``cfg`` / ``plans`` the node would not reproduce."""
    where = f"configurations.{configuration}"
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in READERS:
        raise _refuse("image_reader_writer", reader, f"one of {', '.join(READERS)}: voxel order as read; "
                      "the reorientation of NibabelIOWithReorient and SimpleITKIOWithReorient is not implemented")
    manager = plans.get("label_manager", "LabelManager")
    if manager != "LabelManager":
        raise _refuse("label_manager", manager, "LabelManager")
    pre = cfg.get("preprocessor_name", "DefaultPreprocessor")
    if pre != "DefaultPreprocessor":
        raise _refuse(f"{where}.preprocessor_name", pre, "DefaultPreprocessor")
    for fn_key in ("resampling_fn_data", "resampling_fn_probabilities"):
        fn = cfg.get(fn_key, _RESAMPLING)
        if fn != _RESAMPLING:
            raise _refuse(f"{where}.{fn_key}", fn, _RESAMPLING)
        kw_key = f"{fn_key}_kwargs"
        kwargs = dict(cfg.get(kw_key) or {})
        threshold = kwargs.pop("separate_z_anisotropy_threshold", _THRESHOLD)
        if float(threshold) != _THRESHOLD:
            raise _refuse(f"{where}.{kw_key}.separate_z_anisotropy_threshold", threshold, str(_THRESHOLD))
        for name, expected in _EXPECTED[kw_key].items():
            got = kwargs.pop(name, expected)
            if got != expected:
                raise _refuse(f"{where}.{kw_key}.{name}", got, repr(expected))
        if kwargs:
            first = sorted(kwargs)[0]
            raise _refuse(f"{where}.{kw_key}.{first}", kwargs[first], "no such argument")
