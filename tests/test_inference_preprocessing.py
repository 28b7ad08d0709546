"""Preprocessing and sliding window match nnU-Net v2's behaviour for the same plans."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pacsnode.inference.card import Normalization
from pacsnode.inference.preprocessing import (
    PreprocessingPlan,
    compute_new_shape,
    crop_to_nonzero,
    determine_separate_z,
    preprocess,
    resample_data_or_seg_to_shape,
    revert_to_source,
)
from pacsnode.inference.sliding_window import (
    compute_gaussian,
    compute_steps_for_sliding_window,
    predict_sliding_window,
)

ZSCORE_MASK = Normalization("zscore", use_nonzero_mask=True)
ZSCORE = Normalization("zscore")
NONE = Normalization("none")


def _brain(shape=(20, 24, 22), seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    img[4:15, 5:20, 3:18] = rng.normal(300, 40, (11, 15, 15)).astype(np.float32)
    return img


def test_crop_to_nonzero_bbox_over_all_channels_and_filled_mask():
    a = np.zeros((2, 10, 10, 10), np.float32)
    a[0, 2:5, 3:6, 4:7] = 1
    a[1, 6, 7, 8] = 2
    a[0, 3, 4, 5] = 0  # a hole: still inside the mask
    data, seg, bbox = crop_to_nonzero(a)
    assert bbox == ((2, 7), (3, 8), (4, 9))
    assert data.shape == (2, 5, 5, 5)
    assert seg.dtype == np.int8 and seg[0, 1, 1, 1] == 0 and seg[0, 0, 4, 4] == -1


def test_zscore_over_nonzero_mask_leaves_outside_at_zero():
    img = _brain()
    plan = PreprocessingPlan((1.0, 1.0, 1.0), (ZSCORE_MASK,), crop_to_nonzero=True)
    pre = preprocess(img[None], (1.0, 1.0, 1.0), plan)
    assert pre.bbox == ((4, 15), (5, 20), (3, 18))
    assert pre.shape_after_crop == (11, 15, 15) and pre.data.shape == (1, 11, 15, 15)
    inside = pre.data[0]
    assert float(inside.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(inside.std()) == pytest.approx(1.0, abs=1e-4)


def test_zscore_without_mask_and_ct_clip():
    img = _brain()
    pre = preprocess(img[None], (1, 1, 1), PreprocessingPlan((1, 1, 1), (ZSCORE,), crop_to_nonzero=False))
    assert pre.data.shape == (1, 20, 24, 22)
    assert float(pre.data.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(pre.data.std()) == pytest.approx(1.0, abs=1e-4)
    ct = Normalization("ct", clip=(-100.0, 200.0), mean=50.0, std=25.0)
    hu = np.array([-1000, -100, 50, 200, 3000], np.float32).reshape(1, 1, 1, 5)
    out = preprocess(hu, (1, 1, 1), PreprocessingPlan((1, 1, 1), (ct,), crop_to_nonzero=False)).data
    np.testing.assert_allclose(out.ravel(), [-6, -6, 0, 6, 6])


def test_isotropic_resampling_is_third_order_grid_aligned_like_skimage_resize():
    img = _brain(seed=3)[None]
    new_shape = compute_new_shape(img.shape[1:], (1.0, 1.0, 1.0), (1.5, 1.5, 1.5))
    assert new_shape == (13, 16, 15)
    assert determine_separate_z((1, 1, 1), (1.5, 1.5, 1.5)) is None
    out = resample_data_or_seg_to_shape(img, new_shape, (1, 1, 1), (1.5, 1.5, 1.5))
    # skimage.transform.resize(order=3, mode="edge", anti_aliasing=False) == ndimage.zoom(grid_mode) + clip
    ref = ndimage.zoom(img[0].astype(np.float64), np.array(new_shape) / img.shape[1:], order=3,
                       mode="nearest", grid_mode=True)
    ref = np.clip(ref, img.min(), img.max())
    np.testing.assert_allclose(out[0], ref, atol=2e-3)


def test_anisotropic_resampling_uses_order_zero_along_the_low_resolution_axis():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(1, 6, 10, 12)).astype(np.float32)
    spacing, target = (5.0, 1.0, 1.0), (1.0, 0.5, 0.5)
    assert determine_separate_z(spacing, target) == 0
    assert determine_separate_z((1.0, 4.0, 1.0), (1.0, 1.0, 1.0)) == 1
    assert determine_separate_z((1.0, 2.0, 1.0), (1.0, 1.0, 1.0)) is None
    new_shape = compute_new_shape(img.shape[1:], spacing, target)
    assert new_shape == (30, 20, 24)
    out = resample_data_or_seg_to_shape(img, new_shape, spacing, target)
    # along z: nearest neighbour (order 0) of the in-plane (order 3) resampled slices
    planes = [np.clip(ndimage.zoom(img[0, s].astype(np.float64), (2, 2), order=3, mode="nearest", grid_mode=True),
                      img[0, s].min(), img[0, s].max()) for s in range(6)]
    for z in range(30):
        src = min(int(np.floor((z + 0.5) * 6 / 30)), 5)
        np.testing.assert_allclose(out[0, z], planes[src], atol=2e-3)


def test_segmentation_resampling_order_one_on_one_hot():
    seg = np.zeros((1, 8, 8, 8), np.int8)
    seg[0, 2:6, 2:6, 2:6] = 1
    seg[0, 3:5, 3:5, 3:5] = 2
    out = resample_data_or_seg_to_shape(seg, (16, 16, 16), (1, 1, 1), (0.5, 0.5, 0.5), is_seg=True, order=1)
    assert out.dtype == np.int8 and set(np.unique(out)) == {0, 1, 2}
    # 2×2×2 → 4×4×4 minus the 8 corners where the trilinear one-hot is 0.75³ < 0.5 (nnU-Net does the same)
    assert int((out == 2).sum()) == 64 - 8


def test_preprocess_and_revert_round_trip_on_source_grid():
    img = _brain(seed=2)
    plan = PreprocessingPlan((2.0, 2.0, 2.0), (ZSCORE_MASK,), crop_to_nonzero=True)
    seg = (img > 0).astype(np.int8)[None]
    pre = preprocess(img[None], (1.0, 1.0, 1.0), plan, seg=seg)
    assert pre.seg is not None and pre.seg.shape == pre.data.shape
    back = revert_to_source(pre.data, pre)
    assert back.shape == (1, 20, 24, 22)
    assert np.all(back[0][img == 0][:10] == 0)
    # outside the crop box: exactly the fill value; inside: the order-1 resize of the 2 mm grid back to
    # the box, computed independently with scipy
    (z0, z1), (y0, y1), (x0, x1) = pre.bbox
    outside = np.ones(img.shape, bool)
    outside[z0:z1, y0:y1, x0:x1] = False
    assert np.all(back[0][outside] == 0)
    box = (z1 - z0, y1 - y0, x1 - x0)
    ref = ndimage.zoom(pre.data[0].astype(np.float64), np.array(box) / pre.data.shape[1:], order=1,
                       mode="nearest", grid_mode=True)
    np.testing.assert_allclose(back[0, z0:z1, y0:y1, x0:x1], ref, atol=1e-5)
    # and a smooth image survives 1 mm -> 2 mm -> 1 mm: inside the box it comes back within 5 % of its range
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in (20, 24, 22)], indexing="ij")
    smooth = (100 + 50 * np.exp(-(zz**2 + yy**2 + xx**2))).astype(np.float32)
    pre2 = preprocess(smooth[None], (1.0, 1.0, 1.0), PreprocessingPlan((2.0, 2.0, 2.0), (NONE,), False))
    back2 = revert_to_source(pre2.data, pre2)[0]
    assert float(np.abs(back2 - smooth)[2:-2, 2:-2, 2:-2].max()) < 0.05 * 50


def test_gaussian_and_steps_as_nnunet():
    g = compute_gaussian((8, 8, 8))
    assert g.dtype == np.float32 and g.max() == pytest.approx(10.0) and g.min() > 0
    assert np.unravel_index(np.argmax(g), g.shape) == (4, 4, 4)
    assert compute_steps_for_sliding_window((155, 240, 240), (128, 128, 128), 0.5) == [
        [0, 27], [0, 56, 112], [0, 56, 112]]
    assert compute_steps_for_sliding_window((128, 129, 300), (128, 128, 128), 0.5) == [
        [0], [0, 1], [0, 57, 115, 172]]


def test_sliding_window_pads_small_volumes_and_recovers_the_identity():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1, 5, 13, 9)).astype(np.float32)
    calls = []

    def identity(x):
        calls.append(x.shape)
        return np.concatenate([np.zeros_like(x), x], axis=1)

    out = predict_sliding_window(data, identity, 2, (8, 8, 8), progress=lambda d, t: None)
    assert out.shape == (2, 5, 13, 9) and out.dtype == np.float32
    np.testing.assert_allclose(out[1], data[0], atol=1e-5)
    assert calls == [(1, 1, 8, 8, 8)] * (1 * 3 * 2)  # padded to (8, 13, 9): steps [0], [0, 2, 5], [0, 1]
    mirrored = predict_sliding_window(data, identity, 2, (8, 8, 8), mirror_axes=(0, 1, 2))
    np.testing.assert_allclose(mirrored, out, atol=1e-5)


# ------------------------------------------------------------- the fast paths against a plain reference
def _head(seed, shape=(22, 26, 24), channels=2, holes=True):
    """Seeded channels of a noisy blob, zero outside, with enclosed cavities (holes), a cavity open to
    the border and a cavity that reaches the outside only diagonally (a hole for 6-connectivity)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.ogrid[tuple(slice(0, s) for s in shape)]
    c = [s / 2 + rng.uniform(-2, 2) for s in shape]
    blob = ((zz - c[0]) / 8) ** 2 + ((yy - c[1]) / 10) ** 2 + ((xx - c[2]) / 9) ** 2 < 1
    blob[:, :3, 10:13] = True  # the blob reaches the border (the box's face is the grid's)
    out = np.zeros((channels, *shape), np.float32)
    for k in range(channels):
        out[k][blob] = rng.normal(300 + 40 * k, 50, int(blob.sum())).round()
        out[k][blob & (rng.random(shape) < 0.02)] = 0  # scattered zero voxels inside: holes
    if holes:
        out[:, 9:12, 11:14, 10:13] = 0   # an enclosed cavity
        out[:, 10, 0:4, 11] = 0          # a tunnel from the border: outside, not a hole
        out[:, 6, 12, 12] = 0            # a single-voxel hole
    return out


def _plain_mask(images):
    return ndimage.binary_fill_holes((np.asarray(images) != 0).any(0))


@pytest.mark.parametrize("seed", range(5))
def test_nonzero_mask_equals_scipys_fill_holes_on_the_whole_grid(seed):
    from pacsnode.inference.preprocessing import create_nonzero_mask

    images = _head(seed)
    np.testing.assert_array_equal(create_nonzero_mask(images), _plain_mask(images))
    np.testing.assert_array_equal(create_nonzero_mask(list(images)), _plain_mask(images))
    diag = np.zeros((1, 7, 7, 7), np.float32)
    diag[0, 1:6, 1:6, 1:6] = 1
    diag[0, 3, 3, 3] = 0                  # a hole...
    diag[0, 2, 2, 2] = 0                  # ...reaching the outside only through corners: still a hole
    np.testing.assert_array_equal(create_nonzero_mask(diag), _plain_mask(diag))
    for edge in (np.zeros((1, 4, 5, 6), np.float32), np.ones((1, 4, 5, 6), np.float32)):
        np.testing.assert_array_equal(create_nonzero_mask(edge), _plain_mask(edge))


def _reference_preprocess(images, spacing, plan, seg=None):
    """The steps one after the other on the stacked channels: scipy's fill on the whole grid, the crop,
    the serial normalisation, the resampling of all channels (the node's preprocessing before threads)."""
    from pacsnode.inference.preprocessing import normalize

    mask = _plain_mask(images)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask)) if plan.crop_to_nonzero and \
        mask.any() else tuple(slice(0, s) for s in mask.shape)
    data = images[(slice(None), *box)]
    seg_c = np.where(mask[box], np.int8(0), np.int8(-1))[None]
    if seg is not None:
        seg_c = seg[(slice(None), *box)].copy()
        seg_c[(seg_c == 0) & ~mask[box][None]] = -1
    normed = normalize(data, seg_c, plan.normalization)
    new_shape = tuple(max(1, n) for n in compute_new_shape(data.shape[1:], spacing, plan.target_spacing))
    out = resample_data_or_seg_to_shape(normed, new_shape, spacing, plan.target_spacing, order=plan.order_data,
                                        order_z=plan.order_z)
    seg_out = None if seg is None else resample_data_or_seg_to_shape(
        seg_c, new_shape, spacing, plan.target_spacing, is_seg=True, order=plan.order_seg, order_z=plan.order_z)
    return out, seg_out, tuple((s.start, s.stop) for s in box)


CT = Normalization("ct", clip=(-100.0, 400.0), mean=50.0, std=80.0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("norms,target,crop", [
    ((ZSCORE_MASK, ZSCORE_MASK), (2.0, 2.0, 2.0), True),     # the shipped student's case: 1 mm -> 2 mm
    ((ZSCORE_MASK, ZSCORE), (1.0, 1.0, 1.0), True),           # same grid: no resampling
    ((CT, NONE), (1.5, 1.5, 1.5), True),                       # no mask read: holes not filled
    ((ZSCORE_MASK, CT), (4.0, 1.0, 1.0), False),               # anisotropic, no crop
])
def test_preprocess_equals_the_serial_reference_exactly(seed, norms, target, crop):
    images = _head(seed)
    plan = PreprocessingPlan(target, norms, crop_to_nonzero=crop)
    spacing = (1.0, 1.0, 1.0)
    ref, _, ref_box = _reference_preprocess(images, spacing, plan)
    for given in (images, list(images)):  # stacked or one array per channel (no stacking copy)
        got = preprocess(given, spacing, plan)
        assert got.bbox == ref_box
        np.testing.assert_array_equal(got.data, ref)


def test_preprocess_with_a_training_seg_equals_the_reference():
    images = _head(7)
    seg = np.zeros((1, *images.shape[1:]), np.int8)
    seg[0, 8:14, 10:16, 9:15] = 1
    seg[0, 0, 0, 0] = 2  # a label outside the nonzero mask stays (the mask is seg >= 0)
    plan = PreprocessingPlan((2.0, 2.0, 2.0), (ZSCORE_MASK, ZSCORE_MASK), crop_to_nonzero=True)
    ref, ref_seg, _ = _reference_preprocess(images, (1.0, 1.0, 1.0), plan, seg)
    got = preprocess(images, (1.0, 1.0, 1.0), plan, seg=seg)
    np.testing.assert_array_equal(got.data, ref)
    np.testing.assert_array_equal(got.seg, ref_seg)


def test_zscore_over_the_mask_equals_the_gathered_statistics():
    images = _head(3)
    plan = PreprocessingPlan((1.0, 1.0, 1.0), (ZSCORE_MASK, ZSCORE_MASK), crop_to_nonzero=True)
    got = preprocess(images, (1.0, 1.0, 1.0), plan)
    mask = _plain_mask(images)
    box = tuple(slice(lo, hi) for lo, hi in got.bbox)
    for c in range(2):
        vals = images[c][mask].astype(np.float64)  # nnU-Net: img[mask].mean(), .std()
        expected = images[c][box].astype(np.float64)
        expected[mask[box]] = (expected[mask[box]] - vals.mean()) / vals.std()
        np.testing.assert_allclose(got.data[c], expected, rtol=1e-5, atol=1e-5)


def test_threaded_resampling_restores_the_blas_limit():
    from threadpoolctl import threadpool_info

    from pacsnode.inference.resampling import one_blas_thread

    def limits():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = limits()
    with one_blas_thread():
        with one_blas_thread():  # nested: the inner exit keeps the limit
            pass
        assert all(n == 1 for n in limits())
    assert limits() == before
    preprocess(_head(1), (1.0, 1.0, 1.0), PreprocessingPlan((2.0, 2.0, 2.0), (ZSCORE_MASK,) * 2))
    assert limits() == before
