"""nnU-Net v2 raw dataset (``dataset.json`` + ``imagesTr``/``labelsTr``) → arrays in the node's order.

Arrays come back indexed [k, i, j] = (z, y, x) as pacsnode's ``Volume`` (TEAM.md): a NIfTI
written by the phantoms stores ``array.transpose(2, 1, 0)``, so we transpose back; spacing is
the NIfTI zooms reversed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pacsnode.errors import ConfigError

__all__ = ["RawDataset", "RawCase", "read_dataset", "load_case", "channel_files"]


@dataclass(frozen=True)
class RawCase:
    """One training case: its identifier, the channel files in order and the label file."""

    identifier: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass(frozen=True)
class RawDataset:
    """``dataset.json`` as typed values plus the cases found on disk."""

    root: Path
    name: str
    channel_names: tuple[str, ...]
    labels: Mapping[str, int]
    file_ending: str
    cases: tuple[RawCase, ...]

    @property
    def num_classes(self) -> int:
        """Output channels of a softmax network: background plus every label value."""
        return max(int(v) for v in self.labels.values()) + 1


def _require(meta: Mapping[str, Any], key: str, path: Path) -> Any:
    if key not in meta:
        raise ConfigError(f"dataset.json must have a {key!r} entry, got keys {sorted(meta)} in {path}")
    return meta[key]


def channel_files(images: Path, ident: str, channels: int, ending: str, what: str = "case") -> tuple[Path, ...]:
    """``images/IDENT_0000ENDING`` ... one file per channel, all present, or one ConfigError naming those missing."""
    files = tuple(images / f"{ident}_{c:04d}{ending}" for c in range(channels))
    missing = [p.name for p in files if not p.exists()]
    if missing:
        raise ConfigError(f"every {what} must have one image per channel ({channels}), case {ident!r} lacks "
                          f"{', '.join(missing)} in {images}")
    return files


def read_dataset(root: str | Path) -> RawDataset:
    """Read ``root/dataset.json`` and pair every ``labelsTr`` case with its ``imagesTr`` channels."""
    root = Path(root)
    path = root / "dataset.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"dataset.json must exist in the dataset folder, cannot read {path}: "
                          f"{exc.strerror or exc}") from None
    channels = _require(meta, "channel_names", path)
    if not isinstance(channels, dict) or not channels:
        raise ConfigError(f"dataset.json channel_names must be a non-empty table, got {channels!r}")
    channel_names = tuple(str(channels[k]) for k in sorted(channels, key=int))
    labels_raw = _require(meta, "labels", path)
    labels = {str(k): int(v) for k, v in labels_raw.items() if not isinstance(v, list)}
    if len(labels) != len(labels_raw):
        raise ConfigError("dataset.json labels must map names to single integers (region-based "
                          f"training is not supported), got {labels_raw!r}")
    ending = str(meta.get("file_ending", ".nii.gz"))
    cases = []
    for lab in sorted((root / "labelsTr").glob(f"*{ending}")):
        ident = lab.name[: -len(ending)]
        cases.append(RawCase(ident, channel_files(root / "imagesTr", ident, len(channel_names), ending), lab))
    if not cases:
        raise ConfigError(f"a dataset must have at least one case in labelsTr/*{ending}, found none in {root}")
    return RawDataset(root, str(meta.get("name", root.name)), channel_names, labels, ending, tuple(cases))


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import nibabel as nib

    img = nib.load(str(path))
    arr = np.asarray(img.dataobj).transpose(2, 1, 0)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return arr, (zooms[2], zooms[1], zooms[0])


def load_case(case: RawCase) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]]:
    """(images (C, z, y, x) float32, labels (z, y, x) uint8 or None, spacing (z, y, x))."""
    chans = []
    spacing = None
    for p in case.images:
        arr, sp = _read_nifti(p)
        if spacing is None:
            spacing = sp
        elif chans and arr.shape != chans[0].shape:
            raise ConfigError(f"all channels of a case must have one shape, case {case.identifier!r} "
                              f"has {chans[0].shape} and {arr.shape}")
        chans.append(arr.astype(np.float32))
    seg = None
    if case.label is not None:
        seg_arr, _ = _read_nifti(case.label)
        seg = np.rint(seg_arr).astype(np.uint8)
    assert spacing is not None
    return np.stack(chans), seg, spacing
