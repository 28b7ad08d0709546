"""Largest-component post-processing (cc3d in per-label boxes) equals the rule written out with
scipy on the whole grid: seeded volumes, absent labels, ties, labels on the border, unions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from scipy import ndimage

from pacsnode.inference.postprocessing import keep_largest_component

FULL = np.ones((3, 3, 3), dtype=bool)


def _reference(labels: np.ndarray, values, background: int = 0) -> np.ndarray:
    """The rule on the whole grid: every component but the largest (all tied largest) to background."""
    out = labels.copy()
    for value in values:
        mask = np.isin(out, list(value)) if isinstance(value, Sequence) else out == value
        comp, n = ndimage.label(mask, structure=FULL)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        out[mask & (sizes[comp] != sizes.max())] = background
    return out


def _scattered(seed: int, shape=(30, 40, 50), density=0.3, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype)
    sub = tuple(slice(s // 6, s - s // 5) for s in shape)
    inner = tuple(sl.stop - sl.start for sl in sub)
    labels[sub] = rng.integers(1, 4, inner) * (rng.random(inner) < density)
    return labels


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("values", [(1, 2, 3), (3, 1), ((1, 2), 3), ((1, 2, 3),)])
def test_equals_the_whole_grid_rule_on_seeded_volumes(seed, values):
    labels = _scattered(seed, density=(0.05, 0.2, 0.35)[seed % 3])
    expected = _reference(labels, values)
    got = labels.copy()
    assert keep_largest_component(got, values) is got
    np.testing.assert_array_equal(got, expected)
    if values != ((1, 2, 3),):  # the union of all labels may be one component
        assert (got != labels).any()  # small components were removed


def test_edge_cases_empty_absent_single_and_background():
    empty = np.zeros((4, 5, 6), np.uint8)
    assert keep_largest_component(empty, (1, 2)).sum() == 0
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[1, 1, 1] = 2  # one voxel of 2, label 1 and 3 absent
    before = labels.copy()
    np.testing.assert_array_equal(keep_largest_component(labels, (1, 2, 3)), before)
    full = np.full((5, 5, 5), 1, np.uint8)  # one component filling the grid, touching every face
    np.testing.assert_array_equal(keep_largest_component(full.copy(), (1,)), full)
    other = _scattered(9, shape=(12, 14, 16), dtype=np.int16) + 5  # background 5
    np.testing.assert_array_equal(keep_largest_component(other.copy(), (6, 7), background=5),
                                  _reference(other, (6, 7), background=5))


def test_ties_between_largest_components_all_stay():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[0:2, 0:2, 0:2] = 1      # 8 voxels, in a corner
    labels[7:9, 7:9, 8:10] = 1     # 8 voxels, on the far faces
    labels[5, 0, 5] = 1            # 1 voxel, on a face
    labels[4, 4, 4] = 2
    labels[6, 6, 6] = 2            # two single voxels of 2: a tie (not 26-connected)
    got = keep_largest_component(labels.copy(), (1, 2))
    expected = labels.copy()
    expected[5, 0, 5] = 0
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, _reference(labels, (1, 2)))


def test_diagonal_neighbours_are_one_component_and_border_labels_count():
    labels = np.zeros((8, 8, 8), np.uint8)
    for i in range(4):                 # a diagonal chain from a corner: 26-connected, 4 voxels
        labels[i, i, i] = 1
    labels[7, 7, 5:8] = 1              # 3 voxels on an edge of the grid
    got = keep_largest_component(labels.copy(), (1,))
    assert got[7, 7].sum() == 0 and got.sum() == 4
    np.testing.assert_array_equal(got, _reference(labels, (1,)))


def test_a_non_contiguous_input_is_written_through():
    base = _scattered(11, shape=(20, 22, 24), density=0.25)
    view = np.asfortranarray(base)[::-1]  # any memory order and strides, written through the view
    expected = _reference(np.ascontiguousarray(view), (1, 2, 3))
    keep_largest_component(view, (1, 2, 3))
    np.testing.assert_array_equal(view, expected)
