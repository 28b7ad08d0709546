"""The two-thread helpers: the same values as one thread, no deadlock when nested, errors raised."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pacsnode.inference import threads
from pacsnode.inference.nonzero import nonzero_any
from pacsnode.inference.resampling import linear_resize


def test_split_rows_and_per_item_cover_everything_once_and_nest_serially():
    seen: list[tuple[int, int]] = []
    names: set[str] = set()

    def rows(lo: int, hi: int) -> None:
        names.add(threading.current_thread().name)
        threads.split_rows(lambda a, b: seen.append((lo + a, lo + b)), hi - lo)  # nested: runs here

    threads.split_rows(rows, 10)
    assert sorted(seen) == [(0, 5), (5, 10)]
    assert len(names) == min(2, threads.WORKERS)
    done: list[int] = []
    threads.per_item(lambda i: threads.per_item(lambda j: done.append(10 * i + j), 2), 5)
    assert sorted(done) == sorted(10 * i + j for i in range(5) for j in range(2))


def test_an_error_in_either_half_is_raised():
    def rows(lo: int, hi: int) -> None:
        if lo > 0:
            raise ValueError("second half")

    with pytest.raises(ValueError, match="second half"):
        threads.split_rows(rows, 4)
    with pytest.raises(ValueError, match="item 3"):
        threads.per_item(lambda i: (_ for _ in ()).throw(ValueError(f"item {i}")) if i == 3 else None, 6)


@pytest.mark.parametrize("shape_in,shape_out,start,rows", [
    ((40, 50, 45), (80, 100, 90), 0, 80),     # 2 mm -> 1 mm, all rows
    ((40, 50, 45), (80, 100, 90), 16, 16),    # one slab of rows, as the pipeline's way back
    ((33, 20, 64), (33, 47, 61), 3, 25),      # axis 0 kept, others up and down
])
def test_linear_resize_on_two_threads_equals_one(monkeypatch, shape_in, shape_out, start, rows):
    img = np.random.default_rng(0).normal(size=shape_in).astype(np.float32)
    two = np.empty((rows, *shape_out[1:]), np.float32)
    linear_resize(img, shape_out, two, start=start)
    monkeypatch.setattr(threads, "WORKERS", 1)
    one = np.empty_like(two)
    linear_resize(img, shape_out, one, start=start)
    np.testing.assert_array_equal(two, one)


def test_nonzero_any_on_two_threads_equals_numpy():
    rng = np.random.default_rng(2)
    chans = [np.where(rng.random((70, 60, 50)) < 0.1, rng.normal(size=(70, 60, 50)), 0).astype(np.float32)
             for _ in range(3)]
    np.testing.assert_array_equal(nonzero_any(chans), np.any([c != 0 for c in chans], axis=0))
    np.testing.assert_array_equal(nonzero_any(np.stack(chans)[:1]), chans[0] != 0)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_the_way_back_in_slabs_on_two_threads_equals_one(monkeypatch, activation):
    from pacsnode.inference.pipeline import logits_to_labels
    from pacsnode.inference.preprocessing import Preprocessed

    logits = np.random.default_rng(5).normal(size=(3, 21, 17, 15)).astype(np.float32)
    pre = Preprocessed(data=np.empty(0), seg=None, bbox=((2, 44), (1, 35), (3, 33)), shape_before_crop=(47, 36, 34),
                       shape_after_crop=(42, 34, 30), spacing=(1.0, 1.0, 1.0), target_spacing=(2.0, 2.0, 2.0))
    two = logits_to_labels(logits, pre, activation, [1, 2, 3])
    monkeypatch.setattr(threads, "WORKERS", 1)
    np.testing.assert_array_equal(two, logits_to_labels(logits, pre, activation, [1, 2, 3]))
    assert set(np.unique(two[2:44, 1:35, 3:33])) >= {1, 2}
