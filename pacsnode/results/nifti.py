"""Label maps and probabilities as NIfTI, for research pipelines beside the PACS."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["affine_lps_to_ras_nifti", "write_nifti"]


def affine_lps_to_ras_nifti(affine_lps: np.ndarray) -> np.ndarray:
    """The NIfTI affine of array.transpose(2, 1, 0): diag(-1,-1,1,1) @ A_lps @ P."""
    perm = np.zeros((4, 4))
    perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1  # (j, i, k) -> (k, i, j)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps @ perm


def write_nifti(array: np.ndarray, affine_lps: np.ndarray, path: Path) -> Path:
    """Write a [k, i, j] (or [C, k, i, j]) array, indexed as a Volume, as NIfTI (RAS affine)."""
    data = array.transpose(2, 1, 0) if array.ndim == 3 else array.transpose(3, 2, 1, 0)
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine_lps_to_ras_nifti(affine_lps))
    img.header.set_xyzt_units("mm")
    if array.dtype == np.uint8:
        img.header.set_intent("label")
    nib.save(img, str(path))
    return Path(path)
