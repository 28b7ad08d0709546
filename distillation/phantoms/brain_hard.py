"""The "hard" brain setting (benchmark v2): a phantom on which a network's capacity should matter.

Same template, warp and lesion growth as :mod:`.brain` (whose default output does not change), plus:

* 0-3 lesions per case (drawn uniformly), each over the default 2.5-35 mm radius range;
* tumour contrasts drawn per lesion so that edema, core and enhancing rim overlap in every
  channel (edema may leak contrast on T1ce, the rim may enhance faintly), with a smooth texture
  inside each lesion and partial volume at its edge;
* twelve anatomical structures with their own contrast and label, built geometrically on the
  ICBM152 grid from its CSF/GM/WM maps and atlas-like ellipsoids at MNI coordinates (nilearn ships
  no subcortical atlas offline; nothing is downloaded): lateral and third ventricles, choroid
  plexus (enhances on T1ce, as tumour does), pallidum, putamen, caudate, thalamus, hippocampus
  and amygdala (FLAIR-bright, as edema is), brainstem, cerebellum, corpus callosum;
* a stronger bias field and more noise;
* boundary label noise on the reference (:func:`.label_noise.jitter_boundaries`).

Labels: 0 background, 1 edema, 2 necrotic core, 3 enhancing tumor (the BraTS values, so the
WT/TC/ET regions hold), then 4-15 the structures of ``STRUCTURES`` in order. A lesion overrides the
structure it grows into.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from . import brain
from .case import PhantomCase
from .fields import parse_spacing, smooth_field
from .label_noise import jitter_boundaries

__all__ = ["LABELS", "STRUCTURES", "MAX_LESIONS", "generate_brain_hard_case", "structure_maps"]

MAX_LESIONS = 3

# name, MNI centre (x ≥ 0 side; mirrored when bilateral), radii mm, bilateral, tissue gate,
# relative intensity (T1, T1ce, T2, FLAIR). Gates: "csf" = template CSF > 0.3, "brain" =
# parenchyma > 0.3, "wm" = white matter > 0.5, None = the ellipsoid alone. Earlier rows win overlaps.
STRUCTURES: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float], bool, str | None,
                        tuple[float, float, float, float]], ...] = (
    ("choroid plexus", (26.0, -40.0, 14.0), (4.0, 7.0, 4.0), True, None, (0.50, 1.02, 0.72, 0.55)),
    ("lateral ventricles", (13.0, -6.0, 15.0), (12.0, 37.0, 16.0), True, "csf", (0.24, 0.24, 1.00, 0.12)),
    ("third ventricle", (0.0, -12.0, 2.0), (3.0, 13.0, 8.0), False, None, (0.26, 0.26, 0.98, 0.14)),
    ("pallidum", (19.0, -3.0, -1.0), (4.0, 7.0, 5.0), True, "brain", (0.74, 0.74, 0.42, 0.50)),
    ("putamen", (25.0, 3.0, 1.0), (6.0, 15.0, 9.0), True, "brain", (0.60, 0.60, 0.56, 0.62)),
    ("caudate", (13.0, 10.0, 10.0), (5.0, 14.0, 9.0), True, "brain", (0.58, 0.58, 0.62, 0.64)),
    ("thalamus", (11.0, -18.0, 7.0), (8.0, 13.0, 8.0), True, "brain", (0.66, 0.66, 0.52, 0.57)),
    ("hippocampus", (28.0, -24.0, -12.0), (6.0, 18.0, 6.0), True, "brain", (0.52, 0.52, 0.74, 0.80)),
    ("amygdala", (23.0, -4.0, -19.0), (7.0, 7.0, 6.0), True, "brain", (0.53, 0.53, 0.70, 0.76)),
    ("brainstem", (0.0, -26.0, -32.0), (11.0, 13.0, 22.0), False, "brain", (0.74, 0.74, 0.50, 0.55)),
    ("cerebellum", (24.0, -62.0, -35.0), (25.0, 23.0, 18.0), True, "brain", (0.63, 0.63, 0.58, 0.58)),
    ("corpus callosum", (0.0, -8.0, 20.0), (9.0, 38.0, 5.0), False, "wm", (0.84, 0.84, 0.38, 0.44)),
)
LABELS = {**brain.LABELS, **{4 + n: s[0] for n, s in enumerate(STRUCTURES)}}

# Per-lesion tumour intensity ranges (low, high) in (T1, T1ce, T2, FLAIR); the ranges of the three
# sub-regions overlap in every channel, so no threshold separates them.
_TUMOR = {
    1: ((0.40, 0.55), (0.42, 0.80), (0.78, 0.95), (0.78, 1.00)),   # edema, leaky on T1ce
    2: ((0.26, 0.42), (0.28, 0.55), (0.82, 1.00), (0.50, 0.85)),   # necrotic / non-enhancing core
    3: ((0.45, 0.60), (0.72, 1.05), (0.62, 0.85), (0.68, 0.92)),   # enhancing rim, often faint
}


def _ellipsoid(t_affine: np.ndarray, shape: tuple[int, ...], centre: np.ndarray,
               radii: tuple[float, float, float]) -> np.ndarray:
    axes = [t_affine[a, 3] + t_affine[a, a] * np.arange(n) for a, n in enumerate(shape)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 \
        + ((z - centre[2]) / radii[2]) ** 2 < 1.0


@functools.lru_cache(maxsize=2)
def structure_maps(factor: int) -> np.ndarray:
    """Soft structure maps [len(STRUCTURES), x, y, z] on the template grid of ``brain._template_at(factor)``."""
    tissue, t_affine = brain._template_at(factor)
    csf, gm, wm = tissue
    gates = {"csf": csf > 0.3, "brain": (gm + wm) > 0.3, "wm": wm > 0.5, None: np.ones(csf.shape, bool)}
    taken = np.zeros(csf.shape, dtype=bool)
    maps = np.zeros((len(STRUCTURES), *csf.shape), dtype=np.float32)
    for n, (_, centre, radii, bilateral, gate, _) in enumerate(STRUCTURES):
        c = np.asarray(centre)
        mask = _ellipsoid(t_affine, csf.shape, c, radii)
        if bilateral:
            mask |= _ellipsoid(t_affine, csf.shape, c * np.array([-1.0, 1.0, 1.0]), radii)
        mask &= gates[gate] & ~taken
        taken |= mask
        maps[n] = ndimage.gaussian_filter(mask.astype(np.float32), 0.6 / factor)
    return maps


def _lesions(rng: np.random.Generator, brain_mask: np.ndarray, csf: np.ndarray, wm: np.ndarray,
             spacing: tuple[float, float, float], radius_mm: tuple[float, float]
             ) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Tumour labels (0..3) of 0..MAX_LESIONS lesions that do not overlap, and each one's meta."""
    count = int(rng.integers(0, MAX_LESIONS + 1))
    labels = np.zeros(brain_mask.shape, dtype=np.uint8)
    metas: list[dict[str, object]] = []
    for _ in range(count):
        free = brain_mask & ~ndimage.binary_dilation(labels > 0, iterations=3)
        one, meta = brain._tumor(rng, free, csf, wm, spacing, radius_mm)
        place = (one > 0) & (labels == 0)
        labels[place] = one[place]
        metas.append(meta)
    return labels, metas


def _fractions(labels: np.ndarray, values: range, sigma: float) -> np.ndarray:
    """Partial-volume fractions [len(values), ...] of the given label values (smoothed one-hot)."""
    return np.stack([ndimage.gaussian_filter((labels == v).astype(np.float32), sigma) for v in values])


def generate_brain_hard_case(seed: int, spacing: float | str | tuple[float, ...] = (2.0, 2.0, 2.0), *,
                             tumor_radius_mm: tuple[float, float] = (2.5, 35.0),
                             label_noise: float = 0.5) -> PhantomCase:
    """One hard brain case (see the module docstring) on a (z, y, x) = ``spacing`` mm grid.

    ``label_noise`` is the share of boundary voxels an annotator moves (0 = the exact reference).
    """
    spacing = parse_spacing(spacing)
    lo, hi = (float(v) for v in tumor_radius_mm)
    if not 0 < lo <= hi:
        raise ValueError(f"tumor_radius_mm must be (low, high) with 0 < low <= high, got {tumor_radius_mm!r}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xB5A2])
    shape, affine = brain._grid(spacing)
    factor = brain._template_factor(affine)
    tissue_t, t_affine = brain._template_at(factor)
    coords = brain._warp_coords(rng, shape, affine, t_affine)
    tissue = brain._resample(tissue_t, coords)
    structures = np.clip(brain._resample(structure_maps(factor), coords), 0.0, 1.0)
    brain_mask = tissue.sum(axis=0) > 0.5
    tumor, lesion_meta = _lesions(rng, brain_mask, tissue[0], tissue[2], spacing, (lo, hi))
    brain_mask |= tumor > 0

    labels = np.zeros(shape, dtype=np.uint8)
    strongest = structures.argmax(axis=0)
    has_structure = (structures.max(axis=0) > 0.5) & brain_mask
    labels[has_structure] = 4 + strongest[has_structure]
    labels[tumor > 0] = tumor[tumor > 0]

    # partial volume: structure and tumour fractions mix with the tissue they sit in
    vsigma = 0.6 / min(spacing)
    tumor_frac = _fractions(tumor, range(1, 4), vsigma) * brain_mask
    s_total = structures.sum(axis=0)
    structures /= np.maximum(s_total, 1.0)
    t_total = tumor_frac.sum(axis=0)
    background = np.clip(1.0 - t_total, 0.0, 1.0)
    structures *= background
    tissue_share = np.clip(background - structures.sum(axis=0), 0.0, 1.0)
    fractions = tissue / np.maximum(tissue.sum(axis=0), 1e-3)

    intensity = brain._INTENSITY * rng.uniform(0.92, 1.08, brain._INTENSITY.shape).astype(np.float32)
    s_int = np.asarray([s[5] for s in STRUCTURES], dtype=np.float32).T        # [channel, structure]
    s_int = s_int * rng.uniform(0.94, 1.06, s_int.shape).astype(np.float32)
    lesion_id, _ = ndimage.label(tumor > 0)
    sigma_noise = rng.uniform(0.025, 0.05)
    images: dict[str, np.ndarray] = {}
    for c, name in enumerate(brain.CHANNELS):
        img = tissue_share * (intensity[c, 0] * fractions[0] + intensity[c, 1] * fractions[1]
                              + intensity[c, 2] * fractions[2])
        img += np.tensordot(s_int[c], structures, axes=1)
        # each connected lesion gets its own draw per sub-region, and a texture inside it
        tumor_img = np.zeros(shape, dtype=np.float32)
        for n in range(1, int(lesion_id.max()) + 1):
            region = ndimage.binary_dilation(lesion_id == n, iterations=2)
            for k, v in enumerate(range(1, 4)):
                tumor_img[region] += tumor_frac[k][region] * rng.uniform(*_TUMOR[v][c])
        texture = 1.0 + rng.uniform(0.08, 0.18) * np.tanh(smooth_field(rng, shape, (12, 14, 12)))
        img += tumor_img * texture
        img = brain._scan(img, rng, spacing, sigma_noise, bias=(0.15, 0.35))  # a stronger bias field
        img[~brain_mask] = 0.0
        images[name] = img.astype(np.float32)
    labels[~brain_mask] = 0
    clean = labels
    if label_noise > 0:
        labels = jitter_boundaries(labels, rng, fraction=label_noise)
        labels[~brain_mask] = 0
    meta: dict[str, object] = {
        "setting": "hard", "template": "ICBM152 2009a (nilearn)", "noise_sigma": float(sigma_noise),
        "lesions": [{"radius_mm": round(float(m["tumor_radius_mm"]), 2),
                     "centre_index": m["tumor_centre_index"]} for m in lesion_meta],
        "label_noise": float(label_noise), "label_noise_voxels": int(np.count_nonzero(labels != clean)),
    }
    return PhantomCase(images=images, labels=labels, affine_lps=affine, spacing=spacing, kind="brain",
                       seed=int(seed), modality="MR", label_names=dict(LABELS), meta=meta)

