"""Data: nnU-Net raw in, node-preprocessed cache, nnU-Net's foreground oversampling, augmented batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distillation.data import (  # noqa: E402
    AugmentConfig,
    PatchBatches,
    forced_foreground,
    load_preprocessed,
    make_loader,
    make_plan,
    preprocess_dataset,
    read_dataset,
    sample_patch,
    write_toy_dataset,
)
from pacsnode.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("raw"), n_cases=3, shape=(24, 28, 32))


@pytest.fixture(scope="module")
def cache(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("pp")
    plan = preprocess_dataset(raw, out, (16, 16, 16))
    return out, plan


def test_raw_dataset_is_read_in_the_node_axis_order(raw) -> None:
    ds = read_dataset(raw)
    assert ds.channel_names == ("T1", "FLAIR") and ds.num_classes == 4
    from distillation.data import load_case

    images, seg, spacing = load_case(ds.cases[0])
    assert images.shape == (2, 24, 28, 32) and seg.shape == (24, 28, 32)
    assert spacing == (2.0, 2.0, 2.0) and set(np.unique(seg)) <= {0, 1, 2, 3}


def test_a_missing_channel_file_is_named(tmp_path) -> None:
    root = write_toy_dataset(tmp_path / "r", n_cases=1, shape=(8, 8, 8))
    (root / "imagesTr" / "toy_000_0001.nii.gz").unlink()
    with pytest.raises(ConfigError, match="case 'toy_000' lacks toy_000_0001.nii.gz"):
        read_dataset(root)


def test_plan_uses_median_spacing_and_ct_percentiles() -> None:
    fg = np.arange(1001, dtype=np.float32)
    plan = make_plan(("CT", "T2"), {"background": 0, "liver": 1},
                     [(1.0, 0.5, 0.5), (3.0, 0.8, 0.8), (2.5, 0.7, 0.7)], (32, 32, 32), [fg, fg])
    assert plan.target_spacing == (2.5, 0.7, 0.7)
    ct, mr = plan.normalization
    assert ct["scheme"] == "ct" and ct["clip"] == pytest.approx([5.0, 995.0])
    assert ct["mean"] == pytest.approx(500.0, abs=0.1)
    assert mr == {"scheme": "zscore", "use_nonzero_mask": True}


def test_cache_holds_normalized_data_labels_and_class_locations(raw, cache) -> None:
    out, plan = cache
    assert json.loads((out / "plan.json").read_text())["target_spacing"] == [2.0, 2.0, 2.0]
    cases = load_preprocessed(out)
    assert len(cases) == 3
    c = cases[0]
    assert c.data.dtype == np.float32 and c.data.shape[1:] == c.seg.shape
    brain = c.data[0] != 0
    assert abs(float(c.data[0][brain].mean())) < 0.1  # z-scored over the nonzero mask
    for k, locs in c.class_locations.items():
        assert (c.seg[tuple(locs.T)] == k).all()
    mtime = (out / f"{c.identifier}.npz").stat().st_mtime_ns
    preprocess_dataset(raw, out, (16, 16, 16), plan)  # cached: not redone
    assert (out / f"{c.identifier}.npz").stat().st_mtime_ns == mtime


def test_oversampling_follows_nnunet_rule() -> None:
    # nnU-Net: not sample_idx < round(batch_size * (1 - 0.33))
    assert [forced_foreground(i, 2) for i in range(2)] == [False, True]
    assert [forced_foreground(i, 3) for i in range(3)] == [False, False, True]
    assert sum(forced_foreground(i, 12) for i in range(12)) == 4


def test_forced_patches_contain_foreground_and_small_volumes_are_padded(cache) -> None:
    out, _ = cache
    case = load_preprocessed(out)[0]
    rng = np.random.default_rng(0)
    for _ in range(10):
        img, seg = sample_patch(case, (8, 8, 8), True, rng)
        assert img.shape == (2, 8, 8, 8) and (seg > 0).any()
    img, seg = sample_patch(case, (40, 40, 40), False, rng)
    assert img.shape == (2, 40, 40, 40) and (img[:, 0, 0, 0] == 0).all()


def test_loader_yields_augmented_batches_seeded_per_rank_and_epoch(cache) -> None:
    out, plan = cache
    cases = load_preprocessed(out)

    def first(rank: int, epoch: int):
        ds = PatchBatches(cases, (16, 16, 16), 2, 2, AugmentConfig(), seed=1, rank=rank)
        ds.set_epoch(epoch)
        return next(iter(make_loader(ds)))

    x, y = first(0, 0)
    assert x.shape == (2, 2, 16, 16, 16) and y.shape == (2, 1, 16, 16, 16)
    assert y.dtype == torch.int64 and set(y.unique().tolist()) <= {0, 1, 2, 3}
    assert torch.equal(first(0, 0)[0], x)
    assert not torch.equal(first(1, 0)[0], x)
    assert not torch.equal(first(0, 1)[0], x)
