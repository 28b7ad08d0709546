"""Raw cases → preprocessed ``.npz`` cache, through the node's own preprocessing.

Training must see exactly what deployment sees, so each case goes through
``pacsnode.inference.preprocessing.preprocess`` (crop to nonzero, normalize, resample to the
plan's target spacing). Each cached case holds ``data`` (C, z, y, x) float32, ``seg``
(z, y, x) int8 and ``locs_<k>``: up to 10 000 voxel coordinates of each foreground class,
which the foreground-oversampling sampler draws from (nnU-Net's ``class_locations``). A case
without a label (:mod:`distillation.data.unlabelled`) stores ``labelled = False``, an all-zero
``seg`` and no locations.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillation.data.plan import DataPlan, make_plan
from distillation.data.raw import RawDataset, load_case, read_dataset

__all__ = ["PreprocessedCase", "preprocess_dataset", "load_preprocessed", "node_preprocess"]

log = logging.getLogger(__name__)

MAX_LOCATIONS = 10_000


@dataclass(frozen=True)
class PreprocessedCase:
    identifier: str
    data: np.ndarray  # (C, z, y, x) float32
    seg: np.ndarray  # (z, y, x) int8
    class_locations: dict[int, np.ndarray]  # class → (n, 3) int coordinates
    labelled: bool = True  # False: images only, ``seg`` is a placeholder never trained on


def node_preprocess(images: np.ndarray, spacing: tuple[float, float, float], plan: DataPlan,
                    seg: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The node's preprocessing applied to one case: (data, seg) on the plan's grid.

    ``seg`` comes back (z, y, x) with -1 outside the nonzero mask (nnU-Net's convention);
    the cache stores it as background.
    """
    from pacsnode.inference.card import Normalization
    from pacsnode.inference.preprocessing import PreprocessingPlan, preprocess

    node_plan = PreprocessingPlan(
        tuple(plan.target_spacing),
        tuple(Normalization.from_dict(dict(n), f"normalization[{i}]")
              for i, n in enumerate(plan.normalization)),
        plan.crop_to_nonzero,
    )
    out = preprocess(images, spacing, node_plan, seg=None if seg is None else seg[None].astype(np.int16))
    seg_out = None if out.seg is None else out.seg[0]
    return np.asarray(out.data, dtype=np.float32), seg_out


def _locations(seg: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    locs: dict[int, np.ndarray] = {}
    for k in np.unique(seg):
        if k <= 0:
            continue
        pts = np.argwhere(seg == k)
        if len(pts) > MAX_LOCATIONS:
            pts = pts[rng.choice(len(pts), MAX_LOCATIONS, replace=False)]
        locs[int(k)] = pts.astype(np.int32)
    return locs


def _plan_for(ds: RawDataset, patch_size: tuple[int, int, int]) -> DataPlan:
    spacings, fg = [], None
    ct = [c for c, n in enumerate(ds.channel_names) if n.upper() == "CT"]
    if ct:
        fg = [[] for _ in ds.channel_names]
    rng = np.random.default_rng(1234)
    for case in ds.cases:
        images, seg, spacing = load_case(case)
        spacings.append(spacing)
        if fg is not None and seg is not None:
            for c in ct:
                vals = images[c][seg > 0]
                if vals.size > 10_000:
                    vals = rng.choice(vals, 10_000, replace=False)
                fg[c].append(vals)
    fg_arrays = None if fg is None else [np.concatenate(v) if v else np.zeros(0) for v in fg]
    return make_plan(ds.channel_names, ds.labels, spacings, patch_size, fg_arrays)


def preprocess_dataset(raw_dir: str | Path, cache_dir: str | Path,
                       patch_size: tuple[int, int, int], plan: DataPlan | None = None,
                       identifiers: Collection[str] | None = None) -> DataPlan:
    """Plan (unless given) and preprocess every case of ``raw_dir`` (or only the ``identifiers``,
    whose label files alone are then read) into ``cache_dir``.

    Idempotent: cases already cached under the same plan are kept; a changed plan rebuilds.
    """
    ds = read_dataset(raw_dir)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    plan = plan or _plan_for(ds, patch_size)
    plan_path = cache / "plan.json"
    if plan_path.exists() and DataPlan.load(plan_path) != plan:
        for old in cache.glob("*.npz"):
            old.unlink()
    plan.save(plan_path)
    rng = np.random.default_rng(0)
    for case in ds.cases:
        if identifiers is not None and case.identifier not in identifiers:
            continue
        target = cache / f"{case.identifier}.npz"
        if target.exists():
            continue
        images, seg, spacing = load_case(case)
        data, seg_out = node_preprocess(images, spacing, plan, seg)
        seg_arr = np.zeros(data.shape[1:], np.int8) if seg_out is None else seg_out.astype(np.int8)
        seg_arr[seg_arr < 0] = 0
        locs = _locations(seg_arr, rng)
        tmp = cache / f"{case.identifier}.tmp.npz"
        np.savez(tmp, data=data.astype(np.float32), seg=seg_arr,
                 **{f"locs_{k}": v for k, v in locs.items()})
        tmp.replace(target)
        log.info("preprocessed %s: %s", case.identifier, data.shape)
    return plan


def load_preprocessed(cache_dir: str | Path, identifiers: list[str] | None = None) -> list[PreprocessedCase]:
    """Load cached cases (all, or the named ones in that order) into memory."""
    cache = Path(cache_dir)
    paths = sorted(p for p in cache.glob("*.npz") if not p.name.endswith(".tmp.npz"))
    if identifiers is not None:
        by_id = {p.name[:-4]: p for p in paths}
        paths = [by_id[i] for i in identifiers]
    out = []
    for p in paths:
        with np.load(p) as z:
            locs = {int(k[5:]): z[k] for k in z.files if k.startswith("locs_")}
            labelled = bool(z["labelled"]) if "labelled" in z.files else True
            out.append(PreprocessedCase(p.name[:-4], z["data"], z["seg"], locs, labelled))
    return out
