"""Synthetic abdominal CT in Hounsfield units with organ labels.

A procedural body: an elliptical trunk (skin, subcutaneous fat, muscle wall, visceral
fat with bowel), spine and paraspinal muscles, aorta and IVC, liver, spleen, both
kidneys and, optionally, a hypo- or hyper-dense liver lesion. Sizes, positions,
shapes (smoothly deformed ellipsoids), enhancement and noise vary with the seed.
Labels: 0 background, 1 liver, 2 spleen, 3 right kidney, 4 left kidney, 5 liver lesion.
Patient coordinates are LPS: x grows to the patient's left, y posterior, z superior.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .case import PhantomCase
from .fields import parse_spacing, smooth_field

__all__ = ["CHANNELS", "LABELS", "generate_ct_case"]

log = logging.getLogger(__name__)

CHANNELS = ("CT ABDOMEN",)
LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "right kidney", 4: "left kidney",
          5: "liver lesion"}

_FOV = ((-200.0, 200.0), (-170.0, 170.0), (-90.0, 90.0))   # LPS mm: x, y, z


def _grid(spacing: tuple[float, float, float]) -> tuple[tuple[int, int, int], np.ndarray]:
    sz, sy, sx = spacing
    (x0, x1), (y0, y1), (z0, z1) = _FOV
    shape = (int(round((z1 - z0) / sz)), int(round((y1 - y0) / sy)), int(round((x1 - x0) / sx)))
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = sz, sy, sx, 1.0
    affine[:3, 3] = (x0 + sx / 2, y0 + sy / 2, z0 + sz / 2)
    return shape, affine


class _Body:
    """World coordinates of the grid and a painter of deformed ellipsoids."""

    def __init__(self, shape: tuple[int, int, int], affine: np.ndarray, rng: np.random.Generator):
        self.shape = shape
        self.affine = affine
        self.rng = rng
        self.z = affine[2, 3] + affine[2, 0] * np.arange(shape[0])
        self.y = affine[1, 3] + affine[1, 1] * np.arange(shape[1])
        self.x = affine[0, 3] + affine[0, 2] * np.arange(shape[2])

    def _box(self, centre: np.ndarray, extent: float) -> tuple[slice, slice, slice]:
        out = []
        for axis, coords in zip((2, 1, 0), (self.z, self.y, self.x), strict=True):
            lo = np.searchsorted(coords, centre[axis] - extent)
            hi = np.searchsorted(coords, centre[axis] + extent)
            out.append(slice(int(lo), int(max(hi, lo + 1))))
        return tuple(out)  # type: ignore[return-value]

    def blob(self, centre: tuple[float, float, float], radii: tuple[float, float, float],
             degrees: float = 0.0, irregularity: float = 0.12) -> tuple[tuple[slice, ...], np.ndarray]:
        """(box, mask) of an ellipsoid (LPS centre, radii in mm) rotated about z, smoothly deformed."""
        c = np.asarray(centre, dtype=np.float64)
        box = self._box(c, max(radii) * (1 + 2 * irregularity) + 2)
        z = (self.z[box[0]] - c[2])[:, None, None]
        y = (self.y[box[1]] - c[1])[None, :, None]
        x = (self.x[box[2]] - c[0])[None, None, :]
        t = math.radians(degrees)
        u = x * math.cos(t) + y * math.sin(t)
        v = -x * math.sin(t) + y * math.cos(t)
        f = (u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (z / radii[2]) ** 2
        shape = tuple(s.stop - s.start for s in box)
        if min(shape) < 1:
            return box, np.zeros(shape, dtype=bool)
        wobble = 1.0 + irregularity * np.tanh(smooth_field(self.rng, shape, 3))
        return box, f < wobble**2


@dataclass(frozen=True)
class _Trunk:
    """What later organs are placed against: trunk semi-axes, spine position and the LPS grids."""

    ax: float
    ay: float
    sy: float
    spine_r: float
    xx: np.ndarray
    yy: np.ndarray
    inner: np.ndarray
    vessel_hu: float
    aorta: np.ndarray
    ivc: np.ndarray


def _trunk(body: _Body, hu: np.ndarray, rng: np.random.Generator) -> _Trunk:
    """Paint skin/fat, muscle wall, bowel, spine, canal, paraspinal muscles, aorta and IVC into ``hu``."""
    shape = body.shape
    # trunk: skin/fat ellipse, muscle wall, visceral fat (a little taper along z)
    ax, ay = rng.uniform(130, 175), rng.uniform(95, 130)
    fat = rng.uniform(8, 35)
    taper = 1.0 + rng.uniform(-0.08, 0.08) * (body.z / 90.0)
    xx = body.x[None, None, :]
    yy = body.y[None, :, None] - rng.uniform(-10, 10)
    rad = np.sqrt((xx / (ax * taper[:, None, None])) ** 2 + (yy / (ay * taper[:, None, None])) ** 2)
    scale = min(ax, ay)
    outer = rad < 1.0
    wall = rad < 1.0 - fat / scale
    inner = rad < 1.0 - (fat + rng.uniform(8, 15)) / scale
    hu[outer] = -100.0 + 10 * rng.standard_normal()
    hu[wall] = 50.0
    hu[inner] = -90.0
    # bowel: smooth soft-tissue/fat mottling with gas pockets, in the anterior abdomen
    bowel = smooth_field(rng, shape, (4, 8, 10)) > 0.0
    gas = smooth_field(rng, shape, (6, 14, 18)) > 1.6
    anterior = (yy < ay * 0.2) & inner
    hu[anterior & bowel] = 30.0
    hu[anterior & gas] = -850.0

    # spine, canal and paraspinal muscles
    sy = ay * rng.uniform(0.45, 0.6)
    spine_r = rng.uniform(16, 22)
    d_spine = np.sqrt(xx**2 + (yy - sy) ** 2) + np.zeros((shape[0], 1, 1))
    for side in (-1, 1):
        muscle = np.sqrt(((xx - side * 45) / 28) ** 2 + ((yy - sy - 25) / 25) ** 2) < 1
        hu[np.broadcast_to(muscle, shape) & outer] = 55.0
    hu[d_spine < spine_r + 2] = 700.0
    hu[d_spine < spine_r] = rng.uniform(180, 300)
    canal = np.sqrt(xx**2 + (yy - sy - spine_r - 8) ** 2) < 9
    hu[np.broadcast_to(canal, shape)] = 20.0
    vessel_hu = rng.uniform(140, 220)
    aorta = np.sqrt((xx - 18) ** 2 + (yy - sy + spine_r + 12) ** 2) < rng.uniform(10, 14)
    ivc = np.sqrt((xx + 22) ** 2 + (yy - sy + spine_r + 8) ** 2) < rng.uniform(9, 13)
    hu[np.broadcast_to(aorta, shape)] = vessel_hu
    hu[np.broadcast_to(ivc, shape)] = vessel_hu * 0.8
    return _Trunk(ax, ay, sy, spine_r, xx, yy, inner, vessel_hu, aorta, ivc)


def _paint(hu: np.ndarray, labels: np.ndarray, value: int, hu_value: float, box: tuple[slice, ...],
           mask: np.ndarray) -> None:
    free = mask & (labels[box] == 0) & (hu[box] > -200) & (hu[box] < 600)
    labels[box][free] = value
    hu[box][free] = hu_value


def _organs(body: _Body, trunk: _Trunk, hu: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> float:
    """Paint liver (1), spleen (2) and kidneys (3 right, 4 left) into ``hu``/``labels``; the liver's HU."""
    ax, ay, sy = trunk.ax, trunk.ay, trunk.sy

    def paint(value: int, hu_value: float, box: tuple[slice, ...], mask: np.ndarray) -> None:
        _paint(hu, labels, value, hu_value, box, mask)

    # liver (patient right = negative x), upper abdomen
    liver_c = (-ax * rng.uniform(0.3, 0.45), -ay * rng.uniform(0.0, 0.2), rng.uniform(10, 45))
    liver_r = (ax * rng.uniform(0.45, 0.6), ay * rng.uniform(0.55, 0.75), rng.uniform(55, 80))
    liver_box, liver = body.blob(liver_c, liver_r, rng.uniform(-25, 5), 0.15)
    liver_hu = rng.uniform(90, 120)
    paint(1, liver_hu, liver_box, liver)
    # spleen: left, posterior, upper
    spleen_c = (ax * rng.uniform(0.5, 0.65), ay * rng.uniform(0.15, 0.35), rng.uniform(25, 55))
    spleen_r = (rng.uniform(25, 40), rng.uniform(40, 60), rng.uniform(35, 55))
    paint(2, rng.uniform(100, 130), *body.blob(spleen_c, spleen_r, rng.uniform(20, 50), 0.12))
    # kidneys either side of the spine, the right a little lower
    kidney_hu = rng.uniform(150, 200)
    kz = rng.uniform(-40, -10)
    for value, side, dz in ((3, -1, -rng.uniform(5, 20)), (4, 1, 0.0)):
        centre = (side * rng.uniform(60, 85), sy - rng.uniform(0, 15), kz + dz)
        radii = (rng.uniform(25, 32), rng.uniform(22, 30), rng.uniform(45, 60))
        box, mask = body.blob(centre, radii, side * rng.uniform(15, 35), 0.08)
        paint(value, kidney_hu, box, mask)
        sinus = ndimage.binary_erosion(mask & (labels[box] == value), iterations=3)
        hu[box][sinus] = kidney_hu - 80
    return float(liver_hu)


def generate_ct_case(seed: int, spacing: float | str | tuple[float, ...] = (3.0, 2.0, 2.0), *,
                     lesion_probability: float = 0.7) -> PhantomCase:
    """One abdominal CT case in HU (integer-valued float32) with labels on a (z, y, x) mm grid."""
    spacing = parse_spacing(spacing)
    if not 0.0 <= lesion_probability <= 1.0:
        raise ValueError(f"lesion_probability must be in 0..1, got {lesion_probability!r}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xC7AB])
    shape, affine = _grid(spacing)
    body = _Body(shape, affine, rng)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)

    trunk = _trunk(body, hu, rng)
    liver_hu = _organs(body, trunk, hu, labels, rng)
    # liver lesion (optional), inside the liver
    lesion = rng.uniform() < lesion_probability
    meta: dict[str, object] = {"lesion": False}
    liver_idx = np.argwhere(labels == 1)
    if lesion and len(liver_idx):
        depth = ndimage.distance_transform_edt(labels == 1, sampling=spacing)
        deep = np.argwhere(depth >= min(depth.max() * 0.6, 25.0))
        k, i, j = deep[rng.integers(len(deep))]
        centre = (body.x[j], body.y[i], body.z[k])
        r = float(math.exp(rng.uniform(math.log(max(5.0, 1.5 * max(spacing))), math.log(25.0))))
        box, mask = body.blob(centre, (r, r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2)), 0, 0.15)
        inside = mask & (labels[box] == 1)
        if inside.any():
            labels[box][inside] = 5
            hu[box][inside] = liver_hu + rng.choice([-1, 1]) * rng.uniform(40, 70)
            meta = {"lesion": True, "lesion_radius_mm": r}

    # acquisition: slight blur, quantum noise, integer HU
    sigma = np.minimum(rng.uniform(0.4, 0.9) / np.asarray(spacing), 1.0)
    hu = ndimage.gaussian_filter(hu, sigma=sigma)
    noise_sd = rng.uniform(8.0, 20.0)
    hu += noise_sd * rng.standard_normal(shape, dtype=np.float32) * (hu > -950)
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.float32)
    meta.update({"noise_sd_hu": float(noise_sd)})
    log.debug("ct case seed=%d shape=%s lesion=%s", seed, shape, meta["lesion"])
    return PhantomCase(images={"CT ABDOMEN": hu}, labels=labels, affine_lps=affine, spacing=spacing,
                       kind="ct", seed=int(seed), modality="CT", label_names=dict(LABELS), meta=meta)
