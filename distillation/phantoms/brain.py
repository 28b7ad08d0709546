"""Synthetic brain-tumor MR (T1, T1ce, T2, FLAIR) with BraTS-like labels.

Built on the ICBM152 2009a template (T1, grey- and white-matter maps) that ships inside
the nilearn wheel: the files ``load_mni152_template(resolution=1)``,
``load_mni152_gm_template(resolution=1)`` and ``load_mni152_wm_template(resolution=1)``
read, loaded once per process (no download ever happens). Per case, a seeded numpy
Generator draws a random affine + smooth deformation, a tumor (edema, necrotic core,
enhancing rim) of random position, size and irregular shape, contrast, bias field,
resolution and Rician noise. Images are skull-stripped (zero outside the brain, as in
BraTS), integer-valued float32; labels are 0 background, 1 edema, 2 necrotic /
non-enhancing core, 3 enhancing tumor.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .case import PhantomCase
from .fields import parse_spacing, smooth_field

__all__ = ["CHANNELS", "LABELS", "generate_brain_case", "load_template"]

log = logging.getLogger(__name__)

CHANNELS = ("T1", "T1ce", "T2", "FLAIR")
LABELS = {0: "background", 1: "edema", 2: "necrotic core", 3: "enhancing tumor"}

# Relative intensity of each tissue class (columns) in each contrast (rows).
#                    CSF   GM    WM    edema necrosis enhancing
_INTENSITY = np.array([
    [0.25, 0.55, 0.80, 0.45, 0.28, 0.52],   # T1: tumor hypo-intense, no enhancement
    [0.25, 0.55, 0.80, 0.45, 0.28, 1.15],   # T1ce: the rim enhances
    [1.00, 0.62, 0.42, 0.88, 0.98, 0.66],   # T2: fluid and edema bright
    [0.12, 0.62, 0.48, 1.00, 0.55, 0.78],   # FLAIR: CSF suppressed, edema brightest
], dtype=np.float32)

# Field of view in LPS millimetres (x: right→left, y: anterior→posterior, z: inferior→superior).
_FOV_LPS = ((-76.0, 76.0), (-80.0, 112.0), (-74.0, 88.0))
_BRAIN_CENTRE_LPS = np.array([0.0, 18.0, 8.0])

_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def _template_images() -> dict[str, nib.Nifti1Image]:
    spec = importlib.util.find_spec("nilearn")
    if spec is not None and spec.submodule_search_locations:
        data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
        paths = {k: data / name for k, name in _TEMPLATE_FILES.items()}
        if all(p.exists() for p in paths.values()):
            return {k: nib.load(p) for k, p in paths.items()}
    from nilearn import datasets  # the same files, through nilearn's own loaders

    return {"t1": datasets.load_mni152_template(resolution=1),
            "gm": datasets.load_mni152_gm_template(resolution=1),
            "wm": datasets.load_mni152_wm_template(resolution=1)}


@functools.lru_cache(maxsize=1)
def load_template() -> tuple[np.ndarray, np.ndarray]:
    """(tissue [3 (CSF, GM, WM), x, y, z] float32 probabilities, RAS affine), cached per process."""
    images = _template_images()
    gm = np.asarray(images["gm"].dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(images["wm"].dataobj, dtype=np.float32) / 255.0
    parenchyma = gm + wm
    # Everything inside the closed brain envelope that is not GM or WM is CSF (ventricles,
    # sulci, cisterns); computed at 2 mm for speed, then brought back to 1 mm.
    coarse = parenchyma[::2, ::2, ::2] > 0.25
    envelope = ndimage.binary_closing(coarse, iterations=3, border_value=0)
    envelope = ndimage.binary_fill_holes(ndimage.binary_dilation(envelope, iterations=1))
    envelope = np.repeat(np.repeat(np.repeat(envelope, 2, 0), 2, 1), 2, 2)[
        : gm.shape[0], : gm.shape[1], : gm.shape[2]]
    csf = np.clip(envelope.astype(np.float32) - parenchyma, 0.0, 1.0)
    csf = ndimage.gaussian_filter(csf, 0.7)
    tissue = np.stack([csf, gm, wm]).astype(np.float32)
    return tissue, np.asarray(images["gm"].affine, dtype=np.float64)


@functools.lru_cache(maxsize=2)
def _template_at(factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The template block-averaged by ``factor`` (smaller, cache-friendly for coarse grids)."""
    tissue, affine = load_template()
    if factor == 1:
        return tissue, affine
    c, x, y, z = tissue.shape
    x, y, z = x - x % factor, y - y % factor, z - z % factor
    small = tissue[:, :x, :y, :z].reshape(c, x // factor, factor, y // factor, factor, z // factor, factor)
    small = np.ascontiguousarray(small.mean(axis=(2, 4, 6)), dtype=np.float32)
    scaled = affine.copy()
    scaled[:3, :3] = affine[:3, :3] * factor
    scaled[:3, 3] = affine[:3, :3] @ np.full(3, (factor - 1) / 2) + affine[:3, 3]
    return small, scaled


def _rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    a, b, c = (math.radians(v) for v in rng.uniform(-max_degrees, max_degrees, 3))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _grid(spacing: tuple[float, float, float]) -> tuple[tuple[int, int, int], np.ndarray]:
    sz, sy, sx = spacing
    (x0, x1), (y0, y1), (z0, z1) = _FOV_LPS
    shape = (int(round((z1 - z0) / sz)), int(round((y1 - y0) / sy)), int(round((x1 - x0) / sx)))
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2] = sz, sy, sx      # k→S, i→P, j→L
    affine[:3, 3] = (x0 + sx / 2, y0 + sy / 2, z0 + sz / 2)
    affine[3, 3] = 1.0
    return shape, affine


def _template_factor(affine: np.ndarray) -> int:
    """2 (the 2 mm block-averaged template) for grids of 1.9 mm or coarser, else 1."""
    return 2 if min(np.linalg.norm(affine[:3, :3], axis=0)) >= 1.9 else 1


def _warp_coords(rng: np.random.Generator, shape: tuple[int, int, int], affine: np.ndarray,
                 t_affine: np.ndarray) -> np.ndarray:
    """Template voxel coordinates [3, k, i, j] of each output voxel under a random affine + deformation."""
    scale = rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, 3)
    m = _rotation(rng, 8.0) * scale[None, :]
    shift = rng.uniform(-6.0, 6.0, 3)
    amplitude = rng.uniform(1.0, 4.0)
    # output LPS → deformed source LPS → template RAS → template voxel, as one linear map + field
    to_ras = np.diag([-1.0, -1.0, 1.0])
    lin = np.linalg.inv(t_affine[:3, :3]) @ to_ras @ m                    # source voxel per LPS mm
    off = (np.linalg.inv(t_affine[:3, :3]) @ (to_ras @ (_BRAIN_CENTRE_LPS + shift - m @ _BRAIN_CENTRE_LPS))
           - np.linalg.inv(t_affine[:3, :3]) @ t_affine[:3, 3])
    total = lin @ affine[:3, :3]                                          # source voxel per output index
    base = lin @ affine[:3, 3] + off
    k, i, j = (np.arange(n, dtype=np.float32) for n in shape)
    coords = np.empty((3, *shape), dtype=np.float32)
    for axis in range(3):
        coords[axis] = (base[axis] + total[axis, 0] * k[:, None, None]
                        + total[axis, 1] * i[None, :, None] + total[axis, 2] * j[None, None, :])
        coords[axis] += amplitude * smooth_field(rng, shape, (4, 5, 4))
    return coords


def _resample(volumes: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Each of ``volumes`` [c, x, y, z] linearly sampled at ``coords`` (zero outside)."""
    out = np.empty((volumes.shape[0], *coords.shape[1:]), dtype=np.float32)
    for c in range(volumes.shape[0]):
        ndimage.map_coordinates(volumes[c], coords, output=out[c], order=1, mode="constant",
                                cval=0.0, prefilter=False)
    return out


def _sample_tissue(rng: np.random.Generator, shape: tuple[int, int, int],
                   affine: np.ndarray) -> np.ndarray:
    """Tissue probabilities [3, k, i, j] under a random affine + smooth deformation."""
    tissue, t_affine = _template_at(_template_factor(affine))
    return _resample(tissue, _warp_coords(rng, shape, affine, t_affine))


def _tumor(rng: np.random.Generator, brain: np.ndarray, csf: np.ndarray, wm: np.ndarray,
           spacing: tuple[float, float, float], radius_mm: tuple[float, float]
           ) -> tuple[np.ndarray, dict[str, object]]:
    """Labels (uint8, 0..3) of one irregular tumor inside ``brain``."""
    sp = np.asarray(spacing)
    lo, hi = radius_mm
    radius = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    core_frac = rng.uniform(0.4, 0.75)
    rim_mm = rng.uniform(1.5, 5.0)
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    candidates_all = np.argwhere(depth >= min(radius * core_frac + sp.max(), 0.8 * depth.max()))
    centre = candidates_all[rng.integers(len(candidates_all))]
    noise_seed = int(rng.integers(2**31))
    labels = np.zeros(brain.shape, dtype=np.uint8)
    for attempt in range(12):
        r = radius * 1.2**attempt
        half = np.ceil(r * 1.6 / sp).astype(int) + 1
        box = tuple(slice(max(int(c) - h, 0), min(int(c) + h + 1, n))
                    for c, h, n in zip(centre, half, brain.shape, strict=True))
        shape = tuple(s.stop - s.start for s in box)
        grids = np.ogrid[tuple(slice(s.start, s.stop) for s in box)]
        dist = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, sp, strict=True)))
        local = np.random.default_rng(noise_seed)
        n1, n2, n3 = (smooth_field(local, shape, c) for c in (5, 3, 3))
        # edema spreads along white matter, with finger-like irregularity
        edema_shape = dist / (r * (1.0 + 0.35 * np.tanh(n1)) * (0.75 + 0.4 * wm[box]))
        core_shape = dist / (r * core_frac * (1.0 + 0.2 * np.tanh(n2)))
        core = core_shape < 1.0
        necrosis_frac = max(1.0 - max(rim_mm, float(sp.max())) / (r * core_frac), 0.3)
        necrosis = core_shape < necrosis_frac * (1.0 + 0.3 * np.tanh(n3))
        inside = brain[box]
        sub = np.zeros(shape, dtype=np.uint8)
        sub[(edema_shape < 1.0) & inside & (csf[box] < 0.6)] = 1
        sub[core] = 3
        sub[necrosis] = 2
        if all(np.any(sub == v) for v in (1, 2, 3)):
            labels[box] = sub
            break
    else:  # pragma: no cover - the growth above always succeeds within a few tries
        raise ValueError(f"could not place a tumor with all three sub-regions at spacing {spacing}")
    meta = {"tumor_radius_mm": r, "core_radius_mm": r * core_frac,
            "tumor_centre_index": [int(c) for c in centre]}
    return labels, meta


def _scan(img: np.ndarray, rng: np.random.Generator, spacing: tuple[float, float, float],
          sigma_noise: float, *, bias: tuple[float, float]) -> np.ndarray:
    """What the scanner does to a noise-free image, drawing from ``rng`` in this order: a blur
    (anisotropic, in voxels), a smooth multiplicative bias field of strength drawn from ``bias``,
    Rician noise of ``sigma_noise``, and integer scaling."""
    blur = rng.uniform(0.3, 0.9, 3) / np.asarray(spacing) * 1.5
    img = ndimage.gaussian_filter(img, sigma=np.minimum(blur, 1.2))
    img *= np.exp(rng.uniform(*bias) * smooth_field(rng, img.shape, 3))
    n1 = rng.standard_normal(img.shape, dtype=np.float32)
    n2 = rng.standard_normal(img.shape, dtype=np.float32)
    img = np.sqrt((img + sigma_noise * n1) ** 2 + (sigma_noise * n2) ** 2)
    return np.rint(img * rng.uniform(700.0, 1300.0))


def generate_brain_case(seed: int, spacing: float | str | tuple[float, ...] = (2.0, 2.0, 2.0), *,
                        tumor_radius_mm: tuple[float, float] = (2.5, 35.0)) -> PhantomCase:
    """One brain-tumor MR case: four contrasts and labels on a (z, y, x) = ``spacing`` mm grid.

    ``tumor_radius_mm`` bounds the whole-tumor (edema) radius, drawn log-uniformly;
    a lesion too small to hold all three sub-regions at this spacing grows until it does.
    """
    spacing = parse_spacing(spacing)
    lo, hi = (float(v) for v in tumor_radius_mm)
    if not 0 < lo <= hi:
        raise ValueError(f"tumor_radius_mm must be (low, high) with 0 < low <= high, got {tumor_radius_mm!r}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xB5A1])
    shape, affine = _grid(spacing)
    tissue = _sample_tissue(rng, shape, affine)
    brain = tissue.sum(axis=0) > 0.5
    labels, meta = _tumor(rng, brain, tissue[0], tissue[2], spacing, (lo, hi))
    brain |= labels > 0
    intensity = _INTENSITY * rng.uniform(0.92, 1.08, _INTENSITY.shape).astype(np.float32)
    norm = np.maximum(tissue.sum(axis=0), 1e-3)
    fractions = tissue / norm
    tumor = labels > 0
    images: dict[str, np.ndarray] = {}
    sigma_noise = rng.uniform(0.01, 0.035)
    for c, name in enumerate(CHANNELS):
        img = intensity[c, 0] * fractions[0] + intensity[c, 1] * fractions[1] + intensity[c, 2] * fractions[2]
        img[tumor] = intensity[c, 2 + labels[tumor]]
        img = _scan(img, rng, spacing, sigma_noise, bias=(0.05, 0.2))
        img[~brain] = 0.0
        images[name] = img.astype(np.float32)
    labels[~brain] = 0
    meta.update({"template": "ICBM152 2009a (nilearn)", "noise_sigma": float(sigma_noise)})
    log.debug("brain case seed=%d shape=%s radius=%.1f mm", seed, shape, meta["tumor_radius_mm"])
    return PhantomCase(images=images, labels=labels, affine_lps=affine, spacing=spacing,
                       kind="brain", seed=int(seed), modality="MR", label_names=dict(LABELS),
                       meta=meta)
