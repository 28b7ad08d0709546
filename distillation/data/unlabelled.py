"""Scans without labels → preprocessed cases for label-free distillation (docs/label-free.md).

:func:`find_unlabelled` lists the cases of a folder of nnU-Net-named images: ``DIR/imagesTr``
when it exists (a dataset's training images; its ``labelsTr`` is never opened), else ``DIR``
itself (a flat folder of local scans, e.g. a dataset's ``imagesTs`` named explicitly). A case is
``CASE_0000<ending>`` with one file per channel; the ending is ``DIR/dataset.json``'s
``file_ending`` when there is one, else ``.nii.gz``.

:func:`preprocess_unlabelled` writes them through the node's preprocessing like labelled cases,
with ``labelled = False``, an all-zero placeholder ``seg`` and no class locations: the sampler
draws their patches uniformly (no foreground oversampling without a label).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distillation.data.plan import DataPlan
from distillation.data.preprocess import node_preprocess
from distillation.data.raw import RawCase, channel_files, load_case
from pacsnode.errors import ConfigError

__all__ = ["find_unlabelled", "preprocess_unlabelled"]

log = logging.getLogger(__name__)


def _file_ending(root: Path) -> str:
    meta = root / "dataset.json"
    if meta.is_file():
        try:
            return str(json.loads(meta.read_text(encoding="utf-8")).get("file_ending", ".nii.gz"))
        except (OSError, ValueError, AttributeError):
            raise ConfigError(f"--unlabelled's dataset.json must be a JSON object, cannot read {meta}") from None
    return ".nii.gz"


def find_unlabelled(folder: str | Path, channels: int) -> list[RawCase]:
    """The image-only cases of ``folder`` (see the module docstring), sorted by identifier."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"--unlabelled must be a folder of images (imagesTr/CASE_0000.nii.gz or "
                          f"CASE_0000.nii.gz), got {str(root)!r}, which is not a folder")
    ending = _file_ending(root)
    images = root / "imagesTr" if (root / "imagesTr").is_dir() else root
    cases = []
    for first in sorted(images.glob(f"*_0000{ending}")):
        ident = first.name[: -len(f"_0000{ending}")]
        cases.append(RawCase(ident, channel_files(images, ident, channels, ending, "unlabelled case"), None))
    if not cases:
        raise ConfigError(f"--unlabelled must hold at least one case (CASE_0000{ending}), found none in {images}")
    return cases


def preprocess_unlabelled(cases: Sequence[RawCase], cache_dir: str | Path, plan: DataPlan) -> None:
    """Preprocess ``cases`` (images only) with ``plan`` into ``cache_dir``; cached cases are kept."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    plan_path = cache / "plan.json"
    if plan_path.exists() and DataPlan.load(plan_path) != plan:
        for old in cache.glob("*.npz"):
            old.unlink()
    plan.save(plan_path)
    for case in cases:
        target = cache / f"{case.identifier}.npz"
        if target.exists():
            continue
        images, _, spacing = load_case(RawCase(case.identifier, case.images, None))  # never a label
        data, _ = node_preprocess(images, spacing, plan, None)
        tmp = cache / f"{case.identifier}.tmp.npz"
        np.savez(tmp, data=data.astype(np.float32), seg=np.zeros(data.shape[1:], np.int8),
                 labelled=np.array(False))
        tmp.replace(target)
        log.info("preprocessed unlabelled %s: %s", case.identifier, data.shape)
