"""nnU-Net raw dataset cases (imagesTs/labelsTs or imagesTr/labelsTr) as node ``Volume`` objects.

NIfTI follows TEAM.md's convention: the nibabel array is ``array[k, i, j].transpose(2, 1, 0)`` and
``affine_ras = diag(-1, -1, 1, 1) @ affine_lps @ P``; so ``affine_lps = diag(-1, -1, 1, 1) @ affine_ras @ P``
with P swapping the first and third index.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["EvalCase", "iter_cases", "read_nifti", "nifti_volume"]

_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
_P = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(array [k, i, j], affine LPS for (k, i, j), spacing (z, y, x))."""
    import nibabel as nib

    img = nib.load(str(path))
    arr = np.asarray(img.dataobj).transpose(2, 1, 0)
    affine = _FLIP @ np.asarray(img.affine, dtype=float) @ _P
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    return arr, affine, (zooms[2], zooms[1], zooms[0])


def nifti_volume(path: Path, identifier: str, modality: str = "MR", description: str = ""):
    """A ``pacsnode.volume.Volume`` from a NIfTI file (no DICOM datasets; synthetic UIDs)."""
    from pacsnode.volume import Volume

    arr, affine, spacing = read_nifti(path)
    return Volume(array=np.ascontiguousarray(arr, dtype=np.float32), affine=affine, spacing=spacing,
                  datasets=(), frame_of_reference_uid=f"nifti:{identifier}",
                  series_instance_uid=f"nifti:{path.name}", study_instance_uid=f"nifti:{identifier}",
                  modality=modality, series_description=description)


@dataclass(frozen=True)
class EvalCase:
    identifier: str
    images: tuple[Path, ...]
    label: Path | None

    def load_volumes(self, modalities: tuple[str, ...] | None = None) -> list:
        return [nifti_volume(p, self.identifier, (modalities[c] if modalities else "MR"))
                for c, p in enumerate(self.images)]

    def load_images(self) -> tuple[np.ndarray, tuple[float, float, float]]:
        arrays, spacing = [], None
        for p in self.images:
            arr, _, sp = read_nifti(p)
            spacing = spacing or sp
            arrays.append(arr.astype(np.float32))
        return np.stack(arrays), spacing  # type: ignore[return-value]

    def load_label(self) -> np.ndarray:
        if self.label is None:
            raise ValueError(f"case {self.identifier!r} must have a label file to be evaluated, got none")
        return read_nifti(self.label)[0].astype(np.uint8)


def iter_cases(root: str | Path, split: str = "Ts") -> Iterator[EvalCase]:
    """Cases of ``root/images{split}`` paired with ``root/labels{split}`` (label may be missing)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    ending = str(meta.get("file_ending", ".nii.gz"))
    image_dir, label_dir = root / f"images{split}", root / f"labels{split}"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"an nnU-Net dataset split must have images{split}/, got none in {root}")
    n_channels = len(meta.get("channel_names") or {}) or None
    idents = sorted({p.name[: -len(ending) - 5] for p in image_dir.glob(f"*_0000{ending}")})
    for ident in idents:
        if n_channels is None:
            chans = sorted(image_dir.glob(f"{ident}_[0-9][0-9][0-9][0-9]{ending}"))
        else:
            chans = [image_dir / f"{ident}_{c:04d}{ending}" for c in range(n_channels)]
        missing = [p.name for p in chans if not p.exists()]
        if missing:
            raise FileNotFoundError(f"every case must have one image per channel, case {ident!r} lacks {missing}")
        label = label_dir / f"{ident}{ending}"
        yield EvalCase(ident, tuple(chans), label if label.exists() else None)
