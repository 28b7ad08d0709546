"""KD recipes side by side (issue 23 part 3): the public ReCo-KD forms against references written
from the public code's formulas (github.com/ClinicaAlpha/DPRD-3D-MedSeg,
nnunetv2/training/distillation/methods/reco.py, utils.py, config.py; docs/kd-recipes.md), the
warm-up, fixed adapters, and every bundled recipe through a short training run on toy data."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from distillation.checkpoint import load_checkpoint  # noqa: E402
from distillation.config import kd_recipe_names, load_kd_recipe, parse_preset, with_kd_terms  # noqa: E402
from distillation.data import write_toy_dataset  # noqa: E402
from distillation.losses import (  # noqa: E402
    GlobalContextBlock,
    KDConfig,
    KDHeads,
    Objective,
    attention_l1_loss,
    gc_context_loss,
    sard_loss,
    select_stages,
    stage_weights,
)
from distillation.networks import build_network  # noqa: E402
from distillation.train.recipes import distill, train_teacher  # noqa: E402
from pacsnode.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.train

RECIPES = ["recokd-ours", "recokd-public", "recokd-public-no-attention-l1", "recokd-public-no-warmup",
           "recokd-public-relative-error", "recokd-public-trained-adapters"]


# --- references, written from the public code's formulas ------------------------------------------


def ref_attention(f: torch.Tensor, temp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """reco.py get_attention: S = DHW·softmax(mean_c|f| / T), C = C·softmax(mean_xyz|f| / T)."""
    b, c, d, h, w = f.shape
    v = f.abs()
    s = (d * h * w) * F.softmax((v.mean(1, keepdim=True) / temp).view(b, -1), dim=1)
    return s.view(b, d, h, w), c * F.softmax(v.mean((2, 3, 4)) / temp, dim=1)


def ref_masks(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """reco.py generate_area_weighted_fg_bg_mask for a (B, 1, D, H, W) label map."""
    fg = torch.zeros_like(labels, dtype=torch.float32)
    for c in range(1, num_classes):
        mc = (labels == c).float()
        fg += mc / mc.sum(dim=(2, 3, 4), keepdim=True).clamp_min(1e-8)
    bg = (fg == 0).float()
    return fg, bg / bg.sum(dim=(2, 3, 4), keepdim=True).clamp_min(1e-6)


def ref_region(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, c_t: torch.Tensor,
               s_t: torch.Tensor) -> torch.Tensor:
    """reco.py compute_region_loss (tau 1, one chunk): Σ((s - t)·√S_t·√C_t)²·mask / (Σ mask · C)."""
    st = torch.sqrt(s_t).unsqueeze(1)
    ct = torch.sqrt(c_t)[:, :, None, None, None]
    diff2 = (s * st * ct - t * st * ct) ** 2
    return (diff2 * mask).sum() / (mask.sum().clamp_min(1e-8) * s.shape[1])


def ref_mask_loss(s: torch.Tensor, t: torch.Tensor, temp: float) -> torch.Tensor:
    """reco.py get_mask_loss: L1(C_s, C_t) + L1(S_s, S_t)."""
    ss, cs = ref_attention(s, temp)
    st, ct = ref_attention(t, temp)
    return F.l1_loss(cs, ct) + F.l1_loss(ss, st)


def ref_rela(s: torch.Tensor, t: torch.Tensor, block: GlobalContextBlock) -> torch.Tensor:
    """reco.py spatial_pool + get_rela_loss, with the block's weights."""
    def pool(x, conv):
        b, c = x.shape[:2]
        m = F.softmax(F.conv3d(x, conv.weight, conv.bias).view(b, 1, -1), dim=2).unsqueeze(-1)
        return torch.matmul(x.view(b, c, -1).unsqueeze(1), m).view(b, c, 1, 1, 1)

    out_s = s + block.add_s(pool(s, block.mask_s))
    out_t = t + block.add_t(pool(t, block.mask_t))
    return F.mse_loss(out_s, out_t)


def ref_stage_weights(k: int, alpha: float = 0.4, base: float = 2.0, dims: int = 3) -> list[float]:
    """reco.py _stage_weights_by_stride."""
    r = base ** (-dims * alpha)
    w = [r**i for i in range(k)]
    return [x / (sum(w) + 1e-8) for x in w]


def ref_warmup(epoch: int, max_weight: float = 0.01, warmup_epochs: int = 600) -> float:
    """utils.py get_kd_weight_scheduler('warmup', ...), no start delay."""
    return max_weight * min(epoch / warmup_epochs, 1.0)


def _pair(seed: int = 0, b: int = 3, c: int = 6, shape=(4, 6, 5)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, c, *shape, generator=g)
    t = torch.randn(b, c, *shape, generator=g) * 2 + 0.5
    labels = torch.randint(0, 3, (b, 1, *shape), generator=g)
    labels[1][labels[1] == 2] = 1  # case 1 has no class 2
    labels[2] = 0  # case 2 has no foreground at all
    return s, t, labels


# --- each public-form term against its reference ---------------------------------------------------


def test_public_region_terms_match_the_public_formula() -> None:
    s, t, labels = _pair()
    s_t, c_t = ref_attention(t, 0.5)
    fg_mask, bg_mask = ref_masks(labels, 3)
    form = {"attention": "softmax", "temperature": 0.5, "error": "raw", "reduction": "pooled"}
    fg = sard_loss([s], [t], labels, 3, fg_weight=1.0, bg_weight=0.0, **form)
    bg = sard_loss([s], [t], labels, 3, fg_weight=0.0, bg_weight=1.0, **form)
    assert float(fg) == pytest.approx(float(ref_region(s, t, fg_mask, c_t, s_t)), rel=1e-5)
    assert float(bg) == pytest.approx(float(ref_region(s, t, bg_mask, c_t, s_t)), rel=1e-5)
    # this project's form differs on the same tensors (relative error, linear attention, per-case mean)
    ours = sard_loss([s], [t], labels, 3, fg_weight=1.0, bg_weight=0.0)
    assert abs(float(ours) - float(fg)) > 0.1 * float(fg)


def test_public_attention_l1_matches_the_public_mask_loss() -> None:
    s, t, _ = _pair(1)
    got = attention_l1_loss([s], [t], form="softmax", temperature=0.5)
    assert float(got) == pytest.approx(float(ref_mask_loss(s, t, 0.5)), rel=1e-5)
    assert float(got) > 0.1


def test_public_context_block_matches_the_public_rela_loss_and_starts_as_a_dense_mse() -> None:
    s, t, _ = _pair(2)
    torch.manual_seed(0)
    block = GlobalContextBlock(s.shape[1])
    at_init = gc_context_loss([s], [t], [block])
    assert float(at_init) == pytest.approx(float(F.mse_loss(s, t)), rel=1e-6)  # zero-initialised last conv
    with torch.no_grad():  # a trained block: every weight non-zero
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    got = gc_context_loss([s], [t], [block])
    assert float(got) == pytest.approx(float(ref_rela(s, t, block)), rel=1e-5)
    assert abs(float(got) - float(at_init)) > 1e-3


def test_public_stage_selection_and_weights() -> None:
    assert select_stages(4, bottleneck=False) == [0, 1, 2]
    assert select_stages(4) == [0, 1, 2, 3]
    assert stage_weights(3, load_kd_recipe("recokd-public").stage_decay) == pytest.approx(ref_stage_weights(3))
    with pytest.raises(ValueError, match="at least one encoder stage"):
        select_stages(1, bottleneck=False)


@pytest.mark.parametrize(("epoch", "scale"), [(0, 0.0), (300, 0.5), (600, 1.0), (1000, 1.0)])
def test_warm_up_is_linear_over_60_percent_of_training(epoch: int, scale: float) -> None:
    kd = load_kd_recipe("recokd-public")
    assert kd.scale_at(epoch, 1000) == pytest.approx(scale)
    assert kd.sard_weight * kd.scale_at(epoch, 1000) == pytest.approx(ref_warmup(epoch))
    assert KDConfig().scale_at(epoch, 1000) == 1.0  # default: constant from the first step


def test_the_public_recipe_is_the_public_total() -> None:
    """recokd-public through Objective = kd_weight(epoch) · Σ_stages w_s (fg + bg + mask + rel)."""
    torch.manual_seed(3)
    widths_s, widths_t = [4, 6, 8, 8], [8, 12, 16, 16]
    shapes = [(8, 8, 8), (4, 4, 4), (2, 2, 2), (1, 1, 1)]
    s_feats = [torch.randn(2, c, *sh) for c, sh in zip(widths_s, shapes, strict=True)]
    t_feats = [torch.randn(2, c, *sh) for c, sh in zip(widths_t, shapes, strict=True)]
    labels = torch.randint(0, 3, (2, 1, 8, 8, 8))
    logits = torch.randn(2, 3, 8, 8, 8)
    kd = load_kd_recipe("recokd-public")
    heads = KDHeads(widths_s, widths_t, context=True).fix()
    objective = Objective(3, kd, heads=heads)
    objective.set_epoch(300, 1000)
    projected = heads(s_feats)
    total, parts = objective(logits, labels, projected=projected, teacher_features=t_feats)
    expected = 0.0
    for w, k in zip(ref_stage_weights(3), range(3), strict=True):  # the bottleneck (stage 3) is dropped
        s, t = projected[k], t_feats[k]
        lab = F.interpolate(labels.float(), size=s.shape[2:], mode="nearest-exact")
        s_t, c_t = ref_attention(t, 0.5)
        fg, bg = ref_masks(lab, 3)
        per_stage = (ref_region(s, t, fg, c_t, s_t) + ref_region(s, t, bg, c_t, s_t)
                     + ref_mask_loss(s, t, 0.5) + F.mse_loss(s, t))
        expected += w * float(per_stage)
    assert parts["kd_scale"] == 0.5
    assert float(total) - parts["seg"] == pytest.approx(ref_warmup(300) * expected, rel=1e-4)


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(("kd", "message"), [
    ({"warmup_fraction": 1.5}, "kd.warmup_fraction must be a number from 0 to 1, got 1.5"),
    ({"attention": "cosine"}, "kd.attention must be one of 'linear', 'softmax', got 'cosine'"),
    ({"attention_temperature": 0}, "kd.attention_temperature must be a positive number, got 0"),
    ({"sard_error": "squared"}, "kd.sard_error must be one of 'relative', 'raw', got 'squared'"),
    ({"ca_form": "dense"}, "kd.ca_form must be one of 'affinity', 'gc', got 'dense'"),
    ({"adapters": "frozen"}, "kd.adapters must be one of 'trained', 'fixed', got 'frozen'"),
    ({"attention_l1_weight": -1}, "kd.attention_l1_weight must be zero or a positive number, got -1"),
])
def test_bad_kd_keys_are_one_line_naming_the_key(kd, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_preset({"kd": kd})


def test_recipes_are_bundled_named_and_replace_the_whole_kd_table() -> None:
    assert kd_recipe_names() == RECIPES
    base = parse_preset({"kd": {"logit": True, "ca_grid": 4}})
    assert with_kd_terms(base, "recokd-public").kd == load_kd_recipe("recokd-public")
    assert with_kd_terms(base, "recokd-public").kd.ca_grid == 8
    from distillation.config import load_preset

    assert load_kd_recipe("recokd-ours") == load_preset("brain-cpu-adamw").kd
    public = load_kd_recipe("recokd-public")
    for name, key, value in [("trained-adapters", "adapters", "trained"), ("no-attention-l1", "attention_l1", False),
                             ("relative-error", "sard_error", "relative"), ("no-warmup", "warmup_fraction", 0.0)]:
        assert load_kd_recipe(f"recokd-public-{name}") == replace(public, **{key: value})
    with pytest.raises(ConfigError, match=r"--kd must list terms from logit, sard, ca, got recokd-privat; "
                                          r"or name one KD recipe from recokd-ours, recokd-public"):
        with_kd_terms(base, "recokd-privat")


def test_a_study_names_a_recipe_in_its_runs() -> None:
    from distillation.study.config import parse_study
    from distillation.study.runner import make_preset

    study = parse_study({"training": {"preset": "brain-tiny"},
                         "students": {"runs": ["0.25:recokd-public@0,1", "0.25:none"], "seeds": [0]}})
    keys = study.student_runs()
    assert [(k.kd, k.seed) for k in keys] == [("recokd-public", 0), ("none", 0), ("recokd-public", 1)]
    assert make_preset(study, "student", 1, "recokd-public").kd == load_kd_recipe("recokd-public")
    assert parse_study({}).students.kd == ("none", "logit", "sard", "ca", "logit+sard+ca")


# --- training: fixed adapters, and a 2-step run with every recipe ---------------------------------

TINY = {"data": {"patch_size": [16, 16, 16], "batches_per_epoch": 1, "val_fraction": 0.0, "num_workers": 0},
        "network": {"base_features": 4, "max_features": 16, "max_stages": 3},
        "train": {"epochs": 2, "progress": False, "val_every": 2, "checkpoint_every": 2, "threads": 1},
        "optim": {"amp": False}}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd_recipes")
    raw = write_toy_dataset(root / "raw", n_cases=2, shape=(16, 16, 16))
    train_teacher(replace(parse_preset(TINY), train=replace(parse_preset(TINY).train, epochs=1)), raw, root / "t")
    return raw, root / "t" / "checkpoint_final.pt"


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_trains_two_steps(teacher, tmp_path, recipe) -> None:
    raw, ck_path = teacher
    shutil.copytree(ck_path.parent / "preprocessed", tmp_path / "preprocessed")  # the same plan: kept as is
    preset = with_kd_terms(parse_preset(TINY), recipe)
    summary = distill(preset, ck_path, 0.5, raw, tmp_path)
    assert summary["epochs_completed"] == 2
    ck = load_checkpoint(tmp_path / "checkpoint_final.pt")
    records = json.loads((tmp_path / "metrics.json").read_text())["epochs"]
    kd = preset.kd
    assert all(k in records[-1] for k in ["train_seg", "train_sard", "train_ca"])
    assert ("train_attn" in records[-1]) == kd.attention_l1
    if kd.warmup_fraction:
        assert [r["train_kd_scale"] for r in records] == pytest.approx([0.0, 1 / (0.6 * 2)])
    student = ck.build_network()
    n_student = len(list(student.parameters()))
    n_optimized = sum(len(g["params"]) for g in ck.optimizer["param_groups"])
    teacher_net = load_checkpoint(ck_path).build_network()
    torch.manual_seed(preset.train.seed)  # the heads as the run initialised them (same seed, same order)
    build_network(ck.network_class_name, ck.arch_kwargs, 2, 4, width_factor=0.5, min_features=ck.min_features,
                  deep_supervision=True)
    init = KDHeads(student.features_per_stage, teacher_net.features_per_stage, context=kd.ca_form == "gc")
    if kd.adapters == "fixed":
        init.fix()
        # fixed: not in the optimizer, never changed, and the equal-width stage is the identity
        assert n_optimized == n_student
        assert all(torch.equal(v, ck.kd_heads[k]) for k, v in init.state_dict().items())
    else:
        assert n_optimized == n_student + len(init.state_dict())
        assert any(not torch.equal(v, ck.kd_heads[k]) for k, v in init.state_dict().items())


def test_fixed_heads_get_no_gradient() -> None:
    heads = KDHeads([4, 8], [8, 8], context=True).fix()
    s = [torch.randn(1, 4, 4, 4, 4, requires_grad=True), torch.randn(1, 8, 2, 2, 2, requires_grad=True)]
    t = [torch.randn(1, 8, 4, 4, 4), torch.randn(1, 8, 2, 2, 2)]
    kd = load_kd_recipe("recokd-public")
    objective = Objective(2, replace(kd, warmup_fraction=0.0, bottleneck=True), heads=heads)
    total, _ = objective(torch.randn(1, 2, 4, 4, 4), torch.randint(0, 2, (1, 4, 4, 4)),
                         projected=heads(s), teacher_features=t)
    total.backward()
    assert all(p.grad is None and not p.requires_grad for p in heads.parameters())
    assert s[0].grad is not None and float(s[0].grad.abs().sum()) > 0
    assert torch.equal(heads.adapters[1].weight[:, :, 0, 0, 0], torch.eye(8))  # equal widths: identity
