"""Channels on two threads: every item once, no deadlock when nested, errors raised, same values."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pacsnode.inference import threads
from pacsnode.inference.card import Normalization
from pacsnode.inference.preprocessing import PreprocessingPlan, preprocess


def test_per_item_covers_every_item_once_and_nests_serially():
    done: list[int] = []
    names: set[str] = set()

    def item(i: int) -> None:
        names.add(threading.current_thread().name)
        threads.per_item(lambda j: done.append(10 * i + j), 2)  # nested: runs on this thread

    threads.per_item(item, 5)
    assert sorted(done) == sorted(10 * i + j for i in range(5) for j in range(2))
    assert len(names) <= min(2, threads.WORKERS)


def test_an_error_in_either_thread_is_raised():
    def item(i: int) -> None:
        if i == 3:
            raise ValueError(f"item {i}")

    with pytest.raises(ValueError, match="item 3"):
        threads.per_item(item, 6)


def test_preprocessing_on_two_threads_equals_one(monkeypatch):
    rng = np.random.default_rng(4)
    images = np.zeros((3, 30, 34, 32), np.float32)
    images[:, 5:26, 4:30, 6:28] = rng.normal(200, 30, (3, 21, 26, 22))
    plan = PreprocessingPlan((2.0, 1.5, 1.5), (Normalization("zscore", use_nonzero_mask=True),) * 3)
    two = preprocess(images, (1.0, 1.0, 1.0), plan).data
    monkeypatch.setattr(threads, "WORKERS", 1)
    np.testing.assert_array_equal(two, preprocess(images, (1.0, 1.0, 1.0), plan).data)
