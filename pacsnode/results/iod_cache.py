"""highdicom's IOD table look-ups, memoised.

highdicom asks ``is_attribute_in_iod(attribute, sop_class_uid)`` for every source and
further source image of a SEG (does it have pixel data?) and every image an SR references
(is it multi-frame?), each a walk over the standard's module tables (~1.5 ms). For a
four-series brain study that was ~1.5 s of the 1.9 s the SEG and SR took to build. The answer
depends on its arguments only, so :func:`install` puts a cached twin in its place in the
highdicom modules that call it (the functions built on it, ``does_iod_have_pixel_data`` and
``is_multiframe_image``, call it through their module and are covered too). highdicom reads
the standard's tables (JSON, ~0.7 s) on first use; :func:`warm_up` does that ahead of the first job.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from functools import lru_cache

__all__ = ["install", "warm_up"]

_CALLERS = ("highdicom._standard_utils", "highdicom.base", "highdicom.sr.content")


def install() -> None:
    """Replace highdicom's ``is_attribute_in_iod`` with a memoised twin (idempotent)."""
    utils = importlib.import_module("highdicom._standard_utils")
    original = utils.is_attribute_in_iod
    if getattr(original, "pacsnode_cached", False):
        return

    @lru_cache(maxsize=4096)
    def _cached(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
        return original(attribute, sop_class_uid, list(exclude) if exclude is not None else None)

    def is_attribute_in_iod(attribute: str, sop_class_uid: str,
                            exclude_path_elements: Sequence[str] | None = None) -> bool:
        exclude = tuple(exclude_path_elements) if exclude_path_elements is not None else None
        return _cached(str(attribute), str(sop_class_uid), exclude)

    is_attribute_in_iod.pacsnode_cached = True  # type: ignore[attr-defined]
    is_attribute_in_iod.__doc__ = original.__doc__
    for name in _CALLERS:
        module = importlib.import_module(name)
        if getattr(module, "is_attribute_in_iod", None) is original:
            module.is_attribute_in_iod = is_attribute_in_iod


def warm_up() -> None:
    """Load highdicom's standard tables now (the node calls this at start, off the job path)."""
    utils = importlib.import_module("highdicom._standard_utils")
    utils.get_sop_class_iod_map()
    utils.get_iod_module_map()
    utils.get_module_attribute_map()
