"""The hard phantom setting (issue 23, benchmark v2): determinism, lesions, structures, label noise, 1 mm."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from distillation.phantoms.brain_hard import MAX_LESIONS, STRUCTURES, generate_brain_hard_case
from distillation.phantoms.ct_hard import generate_ct_hard_case
from distillation.phantoms.label_noise import boundary_mask, jitter_boundaries
from distillation.phantoms.settings import generate_case


@pytest.fixture(scope="module")
def brain_cases() -> dict[int, object]:
    """Seeds 0-3 at 3 mm without label noise (fast), keyed by seed."""
    return {s: generate_brain_hard_case(s, 3.0, label_noise=0.0) for s in range(4)}


def test_the_default_setting_is_unchanged() -> None:
    # pinned from the generators before the hard setting existed (same numbers at commit c13d743)
    brain = generate_case("brain", 0)
    assert np.bincount(brain.labels.ravel()).tolist() == [590655, 266, 19, 36]
    assert [int(v.astype(np.float64).sum()) for v in brain.images.values()] == [
        129252982, 190686829, 207483463, 116814780]
    ct = generate_case("ct", 0)
    assert np.bincount(ct.labels.ravel()).tolist() == [1837735, 150277, 27703, 13309, 10976]
    assert int(ct.images["CT ABDOMEN"].astype(np.float64).sum()) == -1295797704


def test_a_hard_case_depends_on_its_seed_only() -> None:
    a, b = generate_brain_hard_case(5, 3.0), generate_brain_hard_case(5, 3.0)
    other = generate_brain_hard_case(6, 3.0)
    assert np.array_equal(a.labels, b.labels)
    assert all(np.array_equal(a.images[c], b.images[c]) for c in a.images)
    assert a.meta == b.meta
    assert not np.array_equal(a.images["T1"], other.images["T1"])


def test_lesion_count_is_zero_to_three_and_each_lesion_is_in_the_labels(brain_cases) -> None:
    counts = []
    for case in brain_cases.values():
        n = len(case.meta["lesions"])
        counts.append(n)
        assert 0 <= n <= MAX_LESIONS
        tumour = np.isin(case.labels, (1, 2, 3))
        assert tumour.any() == (n > 0)
        for lesion in case.meta["lesions"]:                     # each drawn lesion is in the labels
            centre = tuple(int(v) for v in lesion["centre_index"])
            assert case.labels[centre] in (2, 3), (case.seed, centre)
        centres = {tuple(int(v) for v in lesion["centre_index"]) for lesion in case.meta["lesions"]}
        assert len(centres) == n
    assert set(counts) >= {0, 3}, counts                      # these four seeds draw both extremes


def test_every_brain_structure_is_labelled_on_a_2mm_case_without_lesions() -> None:
    case = generate_brain_hard_case(0, 2.0)
    assert case.meta["lesions"] == []
    present = set(np.unique(case.labels).tolist())
    expected = {4 + n for n in range(len(STRUCTURES))}
    assert expected <= present, sorted(expected - present)
    assert present <= {0} | expected
    assert case.label_names[4] == "choroid plexus" and case.label_names[15] == "corpus callosum"
    # each structure has its own contrast: ventricles are dark on FLAIR, choroid plexus bright on T1ce
    t1ce, flair = case.images["T1ce"], case.images["FLAIR"]
    assert np.median(flair[case.labels == 5]) < 0.5 * np.median(flair[case.labels == 13])
    assert np.median(t1ce[case.labels == 4]) > np.median(t1ce[case.labels == 5])


def test_structures_stay_where_lesions_do_not_grow(brain_cases) -> None:
    for case in brain_cases.values():
        present = set(np.unique(case.labels).tolist())
        for value in (5, 13, 14):                             # lateral ventricles, brainstem, cerebellum: large
            assert value in present, (case.seed, value)


def test_every_ct_structure_is_labelled_and_lesions_follow_the_meta() -> None:
    for seed in (0, 1):
        case = generate_ct_hard_case(seed)
        present = set(np.unique(case.labels).tolist())
        assert set(range(6, 15)) | {1, 2, 3, 4} <= present, (seed, sorted(set(range(15)) - present))
        assert (5 in present) == bool(case.meta["lesions"])
        assert case.label_names[8] == "pancreas" and case.label_names[9] == "right adrenal"
    thin = generate_ct_hard_case(0, label_noise=0.0)
    adrenal = thin.labels == 10
    # an adrenal is a plate a few voxels thick: two erosions leave (almost) nothing of it
    assert ndimage.binary_erosion(adrenal, iterations=2).sum() < 0.1 * adrenal.sum()


def test_label_noise_moves_only_boundary_voxels_to_a_neighbours_label() -> None:
    clean = generate_brain_hard_case(1, 3.0, label_noise=0.0)
    noisy = generate_brain_hard_case(1, 3.0, label_noise=0.5)
    assert all(np.array_equal(clean.images[c], noisy.images[c]) for c in clean.images)
    changed = noisy.labels != clean.labels
    assert changed.sum() == noisy.meta["label_noise_voxels"] > 100
    assert not (changed & ~boundary_mask(clean.labels)).any()
    for k, i, j in np.argwhere(changed)[:300]:
        around = clean.labels[max(k - 1, 0):k + 2, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
        assert noisy.labels[k, i, j] in around


def test_jitter_on_a_cube_grows_and_shrinks_its_surface_only() -> None:
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[8:22, 8:22, 8:22] = 2
    out = jitter_boundaries(labels, np.random.default_rng(0), fraction=0.6)
    changed = out != labels
    surface_in = labels.astype(bool) & ~ndimage.binary_erosion(labels.astype(bool))
    surface_out = ndimage.binary_dilation(labels.astype(bool)) & ~labels.astype(bool)
    assert changed.any()
    assert not (changed & ~(surface_in | surface_out)).any()
    assert (out[surface_out & changed] == 2).all() and (out[surface_in & changed] == 0).all()
    assert (changed & surface_out).any() and (changed & surface_in).any()
    assert np.array_equal(jitter_boundaries(labels, np.random.default_rng(0), fraction=0.0), labels)
    with pytest.raises(ValueError, match=r"^label noise fraction must be in 0\.\.1, got 1\.5$"):
        jitter_boundaries(labels, np.random.default_rng(0), fraction=1.5)


@pytest.mark.slow
def test_the_1mm_option_gives_the_1mm_grid() -> None:
    case = generate_case("brain", 2, 1.0, setting="hard")
    assert case.shape == (162, 192, 152) and case.spacing == (1.0, 1.0, 1.0)
    assert case.affine_lps[2, 0] == 1.0 and case.affine_lps[1, 1] == 1.0 and case.affine_lps[0, 2] == 1.0
    assert {5, 13, 14} <= set(np.unique(case.labels).tolist())


def test_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^phantom setting must be one of default, hard, got 'extreme'$"):
        generate_case("brain", 0, setting="extreme")
    with pytest.raises(ValueError, match=r"^a tumour radius range applies to brain phantoms, got kind 'ct'$"):
        generate_case("ct", 0, setting="hard", tumor_radius_mm=(3.0, 9.0))


def test_a_study_selects_the_setting_and_keeps_its_dataset_folder(tmp_path, monkeypatch) -> None:
    import distillation.cli.phantoms as phantoms_cli
    from distillation.study.config import parse_study
    from distillation.study.runner import _ensure_dataset, dataset_dir

    config = parse_study({"dataset": {"kind": "brain", "setting": "hard", "cases": 2, "test_cases": 1}})
    seen = []
    monkeypatch.setattr(phantoms_cli, "run", lambda args: seen.append(args) or 0)
    assert _ensure_dataset(config, tmp_path) == dataset_dir(config, tmp_path)
    assert (seen[0].setting, seen[0].dataset_id, seen[0].name) == ("hard", 501, "BrainTumorPhantom")
    from pacsnode.errors import PacsnodeError

    with pytest.raises(PacsnodeError, match=r"^dataset\.setting must be one of 'default', 'hard', got 'x'$"):
        parse_study({"dataset": {"setting": "x"}})
