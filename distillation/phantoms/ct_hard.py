"""The "hard" abdominal CT setting (benchmark v2): small and thin organs, 0-3 lesions, label noise.

Same procedural body as :mod:`.ct` (whose default output does not change), plus:

* labels for the aorta and IVC the default body already draws, the vertebral body, and new small or
  thin organs: pancreas (a curved, lobulated tube whose HU overlaps liver and spleen), both
  adrenals (inverted-V plates a few mm thick above the kidneys), gallbladder (fluid, in the liver's
  fossa), the portal and splenic veins (tubes 3-7 mm in radius), the stomach (wall, fluid and an
  air-fluid level);
* 0-3 liver lesions (uniform) over the default radius range, their HU only 15-45 from the liver's,
  with a texture inside each;
* more quantum noise, and boundary label noise on the reference (:func:`.label_noise.jitter_boundaries`).

Labels: 1-5 as in :mod:`.ct` (liver, spleen, right kidney, left kidney, liver lesion), then 6-14 the
structures of ``STRUCTURES`` in order.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from . import ct
from .case import PhantomCase
from .fields import parse_spacing, smooth_field
from .label_noise import jitter_boundaries

__all__ = ["LABELS", "STRUCTURES", "MAX_LESIONS", "generate_ct_hard_case"]

MAX_LESIONS = 3
STRUCTURES = ("aorta", "inferior vena cava", "pancreas", "right adrenal", "left adrenal", "gallbladder",
              "portal and splenic vein", "stomach", "vertebra")
LABELS = {**ct.LABELS, **{6 + n: name for n, name in enumerate(STRUCTURES)}}
_L = {name: 6 + n for n, name in enumerate(STRUCTURES)}


def _tube(body: ct._Body, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean mask of the union of balls centred at ``points`` [n, 3] (LPS mm) with ``radii`` [n]."""
    mask = np.zeros(body.shape, dtype=bool)
    for p, r in zip(points, radii, strict=True):
        box = body._box(p, r + 1.0)
        z = (body.z[box[0]] - p[2])[:, None, None]
        y = (body.y[box[1]] - p[1])[None, :, None]
        x = (body.x[box[2]] - p[0])[None, None, :]
        mask[box] |= x * x + y * y + z * z < r * r
    return mask


def _curve(a: np.ndarray, b: np.ndarray, c: np.ndarray, step_mm: float) -> np.ndarray:
    """Points of the quadratic Bézier a → b (through control c), about ``step_mm`` apart."""
    n = max(int(np.linalg.norm(b - a) / step_mm) + 2, 3)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * c + t**2 * b


def _set(hu: np.ndarray, labels: np.ndarray, mask: np.ndarray, value: int, hu_value: float,
         over: tuple[int, ...] = (0,)) -> None:
    """Label ``mask`` as ``value`` (and set its HU) where the current label is one of ``over``."""
    free = mask & np.isin(labels, over)
    labels[free] = value
    hu[free] = hu_value


def _small_organs(body: ct._Body, trunk: ct._Trunk, hu: np.ndarray, labels: np.ndarray,
                  rng: np.random.Generator, spacing: tuple[float, float, float]) -> None:
    shape = body.shape
    sy, ax, ay, step = trunk.sy, trunk.ax, trunk.ay, min(spacing) / 2
    zz = body.z[:, None, None]
    vertebra = np.broadcast_to(np.sqrt(trunk.xx**2 + (trunk.yy - sy) ** 2) < trunk.spine_r + 2, shape)
    _set(hu, labels, vertebra, _L["vertebra"], float(rng.uniform(200, 320)))
    hu[vertebra & (labels == _L["vertebra"]) & ~np.broadcast_to(
        np.sqrt(trunk.xx**2 + (trunk.yy - sy) ** 2) < trunk.spine_r, shape)] = 700.0
    labels[np.broadcast_to(trunk.aorta, shape) & (labels == 0)] = _L["aorta"]
    labels[np.broadcast_to(trunk.ivc, shape) & (labels == 0)] = _L["inferior vena cava"]

    kidneys = np.argwhere(np.isin(labels, (3, 4)))
    top = body.z[kidneys[:, 0].max()] if len(kidneys) else 30.0
    # pancreas: head by the duodenum (patient right, in front of the IVC) to the tail at the splenic hilum
    front = sy - trunk.spine_r - rng.uniform(28, 40)
    zp = top - rng.uniform(5, 25)
    head = np.array([-rng.uniform(25, 40), front - rng.uniform(0, 10), zp - rng.uniform(5, 15)])
    tail = np.array([ax * rng.uniform(0.42, 0.55), sy - rng.uniform(5, 25), zp + rng.uniform(5, 20)])
    neck = np.array([rng.uniform(-5, 10), front - rng.uniform(12, 22), zp])
    points = _curve(head, tail, neck, step)
    thickness = np.linspace(rng.uniform(10, 14), rng.uniform(5, 8), len(points))
    thickness *= 1.0 + 0.15 * np.tanh(smooth_field(rng, (len(points),), 6))
    pancreas = _tube(body, points, thickness)
    lobules = smooth_field(rng, shape, (10, 16, 18)) > -1.2
    _set(hu, labels, pancreas & lobules, _L["pancreas"], float(rng.uniform(85, 115)))
    # splenic vein along the pancreas' back, portal vein from the confluence up to the liver hilum
    vein_hu = trunk.vessel_hu * rng.uniform(0.75, 0.9)
    behind = points[len(points) // 3:] + np.array([0.0, thickness[-1] + 3.0, 0.0])
    splenic = _tube(body, behind, np.full(len(behind), rng.uniform(3.0, 4.5)))
    liver = np.argwhere(labels == 1)
    hilum = (np.array([body.x[liver[:, 2]].mean(), body.y[liver[:, 1]].mean(), body.z[liver[:, 0]].mean()])
             if len(liver) else head + np.array([-30.0, 0.0, 30.0]))
    confluence = behind[0]
    hilum = hilum + np.array([rng.uniform(15, 30), rng.uniform(-5, 10), -rng.uniform(0, 15)])
    portal_pts = _curve(confluence, hilum, (confluence + hilum) / 2 + np.array([0.0, 0.0, 10.0]), step)
    portal = _tube(body, portal_pts, np.full(len(portal_pts), rng.uniform(5.0, 7.0)))
    _set(hu, labels, splenic | portal, _L["portal and splenic vein"], vein_hu, over=(0, 1))
    # adrenals: inverted-V plates a few mm thick, above and medial to each kidney
    for name, side in (("right adrenal", -1), ("left adrenal", 1)):
        centre = (side * rng.uniform(38, 50), sy - trunk.spine_r - rng.uniform(0, 8), top + rng.uniform(-5, 8))
        limb = (rng.uniform(1.6, 2.6), rng.uniform(10, 15), rng.uniform(12, 18))
        mask = np.zeros(shape, dtype=bool)
        for degrees in (side * rng.uniform(15, 35), -side * rng.uniform(15, 35)):
            box, blob = body.blob(centre, limb, degrees, 0.1)
            mask[box] |= blob
        _set(hu, labels, mask, _L[name], float(rng.uniform(25, 55)), over=(0, 1))
    # gallbladder: fluid in the liver's inferior-anterior fossa
    if len(liver):
        lz, ly, lx = (np.percentile(a, q) for a, q in ((body.z[liver[:, 0]], 25), (body.y[liver[:, 1]], 30),
                                                         (body.x[liver[:, 2]], 70)))
        gb = body.blob((lx, ly, lz), (rng.uniform(11, 17), rng.uniform(12, 20), rng.uniform(25, 40)),
                       rng.uniform(-30, 30), 0.1)
        gmask = np.zeros(shape, dtype=bool)
        gmask[gb[0]] = gb[1]
        _set(hu, labels, gmask & (hu > -200), _L["gallbladder"], float(rng.uniform(0, 25)), over=(0, 1))
    # stomach: left upper quadrant in front of the spleen, wall + fluid + an air-fluid level
    centre = np.array([ax * rng.uniform(0.2, 0.35), -ay * rng.uniform(0.15, 0.35), rng.uniform(30, 60)])
    box, stomach = body.blob(tuple(centre), (rng.uniform(28, 40), rng.uniform(22, 32), rng.uniform(35, 50)),
                             rng.uniform(-30, 10), 0.15)
    smask = np.zeros(shape, dtype=bool)
    smask[box] = stomach
    _set(hu, labels, smask, _L["stomach"], 40.0)
    lumen = ndimage.binary_erosion(smask, iterations=max(1, int(round(4.0 / min(spacing))))) \
        & (labels == _L["stomach"])
    hu[lumen] = rng.uniform(5, 25)
    level = centre[1] - rng.uniform(0, 20)                    # air rises anteriorly (supine: smaller y)
    hu[lumen & (body.y[None, :, None] < level) & (zz > -1e9)] = -900.0


def _lesions(body: ct._Body, hu: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
             spacing: tuple[float, float, float], liver_hu: float) -> list[dict[str, float]]:
    count = int(rng.integers(0, MAX_LESIONS + 1))
    metas = []
    for _ in range(count):
        depth = ndimage.distance_transform_edt(labels == 1, sampling=spacing)
        if depth.max() <= 0:
            break
        deep = np.argwhere(depth >= min(depth.max() * 0.5, 20.0))
        k, i, j = deep[rng.integers(len(deep))]
        r = float(math.exp(rng.uniform(math.log(max(5.0, 1.5 * max(spacing))), math.log(25.0))))
        box, mask = body.blob((body.x[j], body.y[i], body.z[k]),
                              (r, r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2)), 0, 0.2)
        inside = mask & (labels[box] == 1)
        if not inside.any():
            continue
        texture = rng.uniform(6, 15) * smooth_field(rng, inside.shape, 4)
        value = liver_hu + rng.choice([-1, 1]) * rng.uniform(15, 45)
        labels[box][inside] = 5
        hu[box][inside] = (value + texture)[inside]
        metas.append({"radius_mm": round(r, 2)})
    return metas


def generate_ct_hard_case(seed: int, spacing: float | str | tuple[float, ...] = (3.0, 2.0, 2.0), *,
                          label_noise: float = 0.5) -> PhantomCase:
    """One hard abdominal CT case in HU (see the module docstring) on a (z, y, x) = ``spacing`` mm grid."""
    spacing = parse_spacing(spacing)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xC7AC])
    shape, affine = ct._grid(spacing)
    body = ct._Body(shape, affine, rng)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    trunk = ct._trunk(body, hu, rng)
    liver_hu = ct._organs(body, trunk, hu, labels, rng)
    _small_organs(body, trunk, hu, labels, rng, spacing)
    lesions = _lesions(body, hu, labels, rng, spacing, liver_hu)
    sigma = np.minimum(rng.uniform(0.5, 1.0) / np.asarray(spacing), 1.0)
    hu = ndimage.gaussian_filter(hu, sigma=sigma)
    noise_sd = rng.uniform(15.0, 30.0)
    hu += noise_sd * rng.standard_normal(shape, dtype=np.float32) * (hu > -950)
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.float32)
    clean = labels
    if label_noise > 0:
        labels = jitter_boundaries(labels, rng, fraction=label_noise)
    meta: dict[str, object] = {"setting": "hard", "noise_sd_hu": float(noise_sd), "lesions": lesions,
                               "label_noise": float(label_noise),
                               "label_noise_voxels": int(np.count_nonzero(labels != clean))}
    return PhantomCase(images={"CT ABDOMEN": hu}, labels=labels, affine_lps=affine, spacing=spacing, kind="ct",
                       seed=int(seed), modality="CT", label_names=dict(LABELS), meta=meta)
