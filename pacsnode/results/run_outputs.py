"""A model run (its input volumes and prediction) → SEG and SR, the same way everywhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd

from pacsnode.results.seg import write_seg
from pacsnode.results.sr import write_sr

__all__ = ["seg_for_run", "sr_for_run"]


def seg_for_run(volumes: Sequence[Any], prediction: Any, card: Any, *, model_sha256: str,
                seg_type: str = "binary", **kw: Any) -> hd.seg.Segmentation:
    """The SEG of a run: aligned with the first (reference) volume's instances, referencing
    every other input series; a single Enhanced multi-frame source gets its frame order."""
    reference = volumes[0]
    frames = ([f for _, f in reference.frames]
              if len(reference.datasets) == 1 and reference.frames else None)
    return write_seg(reference.datasets, prediction.labels, card, model_sha256=model_sha256,
                     seg_type=seg_type, probabilities=prediction.probabilities,
                     further_source_datasets=[ds for v in volumes[1:] for ds in v.datasets],
                     source_frames=frames, **kw)


def sr_for_run(seg: hd.seg.Segmentation, volumes: Sequence[Any], prediction: Any, card: Any, *,
               model_sha256: str, **kw: Any) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 volume report of a run's SEG (volumes from the reference grid's voxel size)."""
    return write_sr(seg, prediction.labels, card, volumes[0].datasets, model_sha256=model_sha256,
                    affine=prediction.affine, **kw)
