"""A tiny structured nnU-Net raw dataset for tests and smoke runs (no torch, seconds to write).

Each case is a noisy ellipsoidal "brain" with a BraTS-like lesion: edema (1) around a core (2)
with an enhancing rim (3), at a random position; channel contrasts differ per class. Real
training data comes from ``distillation.phantoms``; this exists so tests run in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["write_toy_dataset"]

_CONTRAST = {  # channel → intensity of (brain, edema, core, enhancing)
    "T1": (1.0, 0.8, 0.5, 1.4),
    "T1ce": (1.0, 0.8, 0.4, 2.0),
    "T2": (1.0, 1.6, 1.3, 1.2),
    "FLAIR": (1.0, 1.8, 1.0, 1.1),
}


def _nifti(array_zyx: np.ndarray, spacing: Sequence[float], path: Path) -> None:
    import nibabel as nib

    affine = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(array_zyx.transpose(2, 1, 0), affine), str(path))


def write_toy_dataset(root: str | Path, n_cases: int = 4, shape: Sequence[int] = (32, 32, 32),
                      channels: Sequence[str] = ("T1", "FLAIR"), spacing: Sequence[float] = (2.0, 2.0, 2.0),
                      seed: int = 0) -> Path:
    """Write ``dataset.json``, ``imagesTr`` and ``labelsTr`` under ``root`` and return it."""
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = (np.array(shape) - 1) / 2
    brain = (((grid - centre[:, None, None, None]) / (np.array(shape)[:, None, None, None] * 0.45)) ** 2).sum(0) <= 1
    for n in range(n_cases):
        c = centre + rng.uniform(-0.15, 0.15, 3) * np.array(shape)
        r = rng.uniform(0.12, 0.2) * min(shape)
        d = np.sqrt(((grid - c[:, None, None, None]) ** 2).sum(0))
        seg = np.zeros(shape, np.uint8)
        seg[(d <= r) & brain] = 1
        seg[d <= 0.6 * r] = 3
        seg[d <= 0.4 * r] = 2
        ident = f"toy_{n:03d}"
        for ch, name in enumerate(channels):
            lut = np.array(_CONTRAST.get(name, (1.0, 1.5, 0.7, 2.0)), np.float32)
            img = np.where(brain, lut[0], 0).astype(np.float32)
            for k in (1, 2, 3):
                img[seg == k] = lut[k]
            img = (img + brain * rng.normal(0, 0.08, shape)).astype(np.float32) * 100
            _nifti(img, spacing, root / "imagesTr" / f"{ident}_{ch:04d}.nii.gz")
        _nifti(seg, spacing, root / "labelsTr" / f"{ident}.nii.gz")
    meta = {
        "name": "toy-brain",
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": {"background": 0, "edema": 1, "necrotic_core": 2, "enhancing_tumor": 3},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return root
