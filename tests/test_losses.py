"""Segmentation and KD losses: nnU-Net conventions and the properties KD relies on."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from distillation.losses import (  # noqa: E402
    DeepSupervisionLoss,
    KDConfig,
    KDHeads,
    Objective,
    class_balanced_masks,
    context_affinity_loss,
    deep_supervision_weights,
    global_context_loss,
    logit_kd_loss,
    sard_loss,
    soft_dice_loss,
)

pytestmark = pytest.mark.train


def _labels(b: int = 2, size: int = 16) -> torch.Tensor:
    y = torch.zeros(b, size, size, size, dtype=torch.long)
    y[:, 2:12, 2:12, 2:12] = 1  # large "edema"
    y[:, 5:9, 5:9, 5:9] = 2
    y[:, 6:7, 6:7, 6:7] = 3  # a single-voxel "enhancing rim"
    return y


def test_deep_supervision_weights_match_nnunet() -> None:
    w = deep_supervision_weights(5)
    raw = [1, 0.5, 0.25, 0.125, 0.0]
    assert w == pytest.approx([x / sum(raw) for x in raw])
    assert w[-1] == 0.0 and sum(w) == pytest.approx(1.0)
    assert deep_supervision_weights(1) == [1.0]
    with pytest.raises(ValueError, match="at least 1, got 0"):
        deep_supervision_weights(0)


def test_soft_dice_is_minus_one_for_a_perfect_prediction_and_ignores_background() -> None:
    y = _labels()
    logits = torch.nn.functional.one_hot(y, 4).movedim(-1, 1).float() * 100
    assert float(soft_dice_loss(logits, y)) == pytest.approx(-1.0, abs=1e-4)
    assert float(soft_dice_loss(logits, y, batch_dice=True)) == pytest.approx(-1.0, abs=1e-4)
    wrong = torch.roll(logits, 1, dims=1)
    assert float(soft_dice_loss(wrong, y)) > -0.1


def test_deep_supervision_downsamples_targets_per_output() -> None:
    y = _labels()
    outs = [torch.randn(2, 4, 16, 16, 16), torch.randn(2, 4, 8, 8, 8), torch.randn(2, 4, 4, 4, 4)]
    loss = DeepSupervisionLoss()(outs, y[:, None])
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="one weight per output, got 2 weights for 3 outputs"):
        DeepSupervisionLoss(weights=[1, 0])(outs, y)


def test_size_normalized_masks_give_each_present_class_the_same_weight() -> None:
    y = _labels()
    y[1] = 0
    y[1, :4, :4, :4] = 1  # sample 1: only one foreground class
    m = class_balanced_masks(y, 4)
    totals = m.flatten(2).sum(-1)
    assert totals[0].tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert totals[1].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
    # the one-voxel class weighs as much as the big one
    assert float(m[0, 3].max()) > 100 * float(m[0, 1].max())


def test_logit_kd_zero_on_agreement_positive_otherwise_and_scales_with_t2() -> None:
    t = torch.randn(2, 4, 8, 8, 8)
    assert float(logit_kd_loss(t.clone(), t, 2.0)) == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(2, 4, 8, 8, 8, requires_grad=True)
    loss = logit_kd_loss(s, t, 1.0)
    assert float(loss) > 0
    loss.backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    # averaged over voxels, not classes: duplicating voxels does not change it
    s2, t2 = torch.cat([s.detach()] * 2, 2), torch.cat([t] * 2, 2)
    assert float(logit_kd_loss(s2, t2, 1.0)) == pytest.approx(float(loss), rel=1e-5)


def test_class_balanced_logit_kd_weighs_a_one_voxel_class_like_the_background() -> None:
    y = _labels()
    t = torch.randn(2, 4, 16, 16, 16)
    s = t.clone()
    rim = y == 3  # one voxel per sample
    s[:, 0][rim] += 4.0  # the student disagrees with the teacher only there
    plain = float(logit_kd_loss(s, t, 1.0))
    balanced = float(logit_kd_loss(s, t, 1.0, labels=y[:, None]))
    kl_rim = float(logit_kd_loss(s[:, :, 6:7, 6:7, 6:7], t[:, :, 6:7, 6:7, 6:7], 1.0))
    assert plain == pytest.approx(kl_rim / 16**3, rel=1e-4)  # voxel mean: one in 4096
    assert balanced == pytest.approx(kl_rim / 4, rel=1e-4)  # class mean: one class in four
    # the objective passes the labels when the preset asks for it
    obj = Objective(4, KDConfig(logit=True, logit_class_balanced=True))
    _, parts = obj(s, y, teacher_outputs=t)
    assert parts["logit"] == pytest.approx(float(logit_kd_loss(s, t, 2.0, labels=y)), rel=1e-5)


def _features(widths=(4, 8, 16), size=16, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, size >> i, size >> i, size >> i, generator=g) for i, c in enumerate(widths)]


@pytest.mark.parametrize("term", ["sard", "affinity", "global"])
def test_feature_kd_terms_zero_on_agreement_and_grad_reaches_adapters(term: str) -> None:
    y = _labels()
    teacher = _features()
    heads = KDHeads((4, 8, 16), (4, 8, 16))
    heads.init_identity()

    def value(student):
        proj = heads(student)
        if term == "sard":
            return sard_loss(proj, teacher, y, 4, bg_weight=1.0)
        if term == "affinity":
            return context_affinity_loss(proj, teacher, grid=4)
        return global_context_loss(proj, teacher)

    assert float(value([f.clone() for f in teacher])) == pytest.approx(0.0, abs=1e-6)
    loss = value(_features(seed=1))
    assert float(loss) > 0
    loss.backward()
    for a in heads.adapters:
        assert a.weight.grad is not None and float(a.weight.grad.abs().sum()) > 0


def test_kd_heads_project_narrow_students_to_teacher_width() -> None:
    heads = KDHeads((2, 4), (8, 16))
    out = heads([torch.randn(1, 2, 8, 8, 8), torch.randn(1, 4, 4, 4, 4)])
    assert [o.shape[1] for o in out] == [8, 16]
    with pytest.raises(ValueError, match="same number of encoder stages, got 2 and 1"):
        KDHeads((2, 4), (8,))


def test_affinity_never_builds_full_resolution_matrices() -> None:
    # 32³ = 32768 positions would be a 4 GB float matrix; pooled to 8³ it is 512×512
    f = torch.randn(1, 4, 32, 32, 32)
    assert float(context_affinity_loss([f], [f.clone()], grid=8)) == pytest.approx(0.0, abs=1e-6)


def test_objective_reports_each_switched_on_term() -> None:
    y = _labels()
    kd = KDConfig(logit=True, sard=True, ca=True)
    obj = Objective(4, kd)
    t_feats = _features()
    heads = KDHeads((2, 4, 8), (4, 8, 16))
    s_feats = _features((2, 4, 8), seed=3)
    total, parts = obj([torch.randn(2, 4, 16, 16, 16), torch.randn(2, 4, 8, 8, 8)], y,
                       projected=heads(s_feats), teacher_outputs=torch.randn(2, 4, 16, 16, 16),
                       teacher_features=t_feats)
    assert set(parts) == {"seg", "logit", "sard", "ca", "total"}
    assert parts["total"] == pytest.approx(float(total))
    assert kd.recipe == "logit+sard+ca" and KDConfig().recipe == "none"
