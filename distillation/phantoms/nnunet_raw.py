"""Write phantom cases as an nnU-Net v2 raw dataset.

Layout: ``DatasetXXX_Name/{imagesTr,labelsTr,imagesTs,labelsTs}`` with
``<case>_<channel:04d>.nii.gz`` images, ``<case>.nii.gz`` labels and ``dataset.json``.
NIfTI voxels follow the team convention: nibabel array = array.transpose(2, 1, 0)
(x = j, y = i, z = k) and affine_ras = diag(-1, -1, 1, 1) @ affine_lps @ P.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from .case import PhantomCase

__all__ = ["nifti_affine", "to_nifti", "from_nifti", "dataset_folder", "write_case",
           "write_dataset_json", "write_nnunet_dataset"]

# (j, i, k, 1) → (k, i, j, 1)
_P = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def nifti_affine(affine_lps: np.ndarray) -> np.ndarray:
    """The RAS affine of the NIfTI whose array is ``array.transpose(2, 1, 0)``."""
    return _LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64) @ _P


def to_nifti(array: np.ndarray, affine_lps: np.ndarray, dtype: type | None = None) -> nib.Nifti1Image:
    """A NIfTI image of a [k, i, j] array (float32 images, uint8 labels)."""
    data = np.asarray(array).transpose(2, 1, 0)
    if dtype is not None:
        data = data.astype(dtype)
    img = nib.Nifti1Image(np.ascontiguousarray(data), nifti_affine(affine_lps))
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm")
    return img


def from_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(array [k, i, j], LPS affine) of a NIfTI written by :func:`to_nifti`."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).transpose(2, 1, 0)
    return data, _LPS_TO_RAS @ img.affine @ np.linalg.inv(_P)


def dataset_folder(root: str | Path, dataset_id: int, name: str) -> Path:
    """``root/DatasetXXX_Name``, validated the way nnU-Net expects."""
    if not 0 < int(dataset_id) < 1000:
        raise ValueError(f"dataset_id must be an integer in 1..999, got {dataset_id!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ValueError(f"dataset name must be letters, digits, '_' or '-', got {name!r}")
    return Path(root) / f"Dataset{int(dataset_id):03d}_{name}"


def _save(img: nib.Nifti1Image, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp.nii.gz")
    nib.save(img, str(tmp))
    os.replace(tmp, path)


def write_case(case: PhantomCase, folder: Path, identifier: str, *, test: bool = False) -> list[Path]:
    """Write one case's channel images and its label map; return the paths written."""
    images_dir = folder / ("imagesTs" if test else "imagesTr")
    labels_dir = folder / ("labelsTs" if test else "labelsTr")
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for c, (_, image) in enumerate(case.images.items()):
        path = images_dir / f"{identifier}_{c:04d}.nii.gz"
        _save(to_nifti(image, case.affine_lps, np.float32), path)
        written.append(path)
    path = labels_dir / f"{identifier}.nii.gz"
    _save(to_nifti(case.labels, case.affine_lps, np.uint8), path)
    written.append(path)
    return written


def write_dataset_json(folder: Path, channels: Sequence[str], labels: dict[int, str],
                       num_training: int, *, modality: str, description: str = "",
                       num_test: int = 0) -> Path:
    """dataset.json as nnU-Net v2 reads it (channel_names, labels, numTraining, file_ending)."""
    if modality == "CT":
        channel_names = {str(c): "CT" for c in range(len(channels))}
    else:
        channel_names = {str(c): name for c, name in enumerate(channels)}
    label_map = {("background" if v == 0 else name.replace(" ", "_")): int(v)
                 for v, name in sorted(labels.items())}
    content = {
        "channel_names": channel_names,
        "labels": label_map,
        "numTraining": int(num_training),
        "file_ending": ".nii.gz",
        "name": folder.name,
        "description": description or "Synthetic phantoms with ground truth (pacsnode distillation.phantoms). "
                                      "Not patient data; not for clinical use.",
        "reference": "distillation.phantoms",
        "licence": "CC0-1.0",
        "channel_series_descriptions": list(channels),
        "numTest": int(num_test),
    }
    path = folder / "dataset.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def write_nnunet_dataset(cases: Iterable[PhantomCase], root: str | Path, dataset_id: int, name: str,
                         *, test_cases: Iterable[PhantomCase] = (), prefix: str = "case") -> Path:
    """Write training (and test) cases as an nnU-Net v2 raw dataset; return its folder."""
    folder = dataset_folder(root, dataset_id, name)
    n_train = n_test = 0
    first: PhantomCase | None = None
    for n, case in enumerate(cases):
        first = first or case
        write_case(case, folder, f"{prefix}_{n:04d}")
        n_train += 1
    for n, case in enumerate(test_cases):
        first = first or case
        write_case(case, folder, f"{prefix}_{n_train + n:04d}", test=True)
        n_test += 1
    if first is None:
        raise ValueError("an nnU-Net dataset needs at least one case, got none")
    write_dataset_json(folder, first.channels, first.label_names, n_train,
                       modality=first.modality, num_test=n_test)
    return folder
