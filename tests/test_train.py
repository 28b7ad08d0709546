"""The training loop through its public API and the `distill` command, on tiny toy data (CPU)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from distillation.checkpoint import load_checkpoint  # noqa: E402
from distillation.cli import main  # noqa: E402
from distillation.config import NetworkConfig, OptimConfig, load_preset, parse_preset  # noqa: E402
from distillation.data import (  # noqa: E402
    DataPlan,
    PatchBatches,
    load_preprocessed,
    validation_patches,
    write_toy_dataset,
)
from distillation.losses import KDConfig, KDHeads, Objective  # noqa: E402
from distillation.networks import build_network  # noqa: E402
from distillation.train import (  # noqa: E402
    ModelPair,
    RunSpec,
    StudentWithHeads,
    build_optimizer,
    fit,
    poly_lr,
    teacher_architecture,
)
from pacsnode.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.train

PLAN = DataPlan(("T1", "FLAIR"), {"background": 0, "edema": 1, "core": 2, "enhancing": 3}, (2.0, 2.0, 2.0),
                ({"scheme": "zscore", "use_nonzero_mask": True},) * 2, (16, 16, 16))


TEST_PRESET = """
name = "test"
[data]
patch_size = [16, 16, 16]
batches_per_epoch = 2
val_fraction = 0.34
val_patches_per_case = 1
num_workers = 0
[network]
base_features = 4
max_features = 16
max_stages = 3
[train]
epochs = 2
progress = false
[kd]
ca_grid = 4
"""


def _net(width: float = 1.0, base: int = 4):
    name, kw = teacher_architecture(NetworkConfig(base_features=base, max_stages=3), PLAN)
    return name, kw, build_network(name, kw, 2, 4, width_factor=width, deep_supervision=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Teacher (1 epoch, then resumed to 2) and a KD student, all through the CLI."""
    root = tmp_path_factory.mktemp("train")
    raw = write_toy_dataset(root / "raw", n_cases=3, shape=(20, 20, 20))
    preset = root / "test.toml"
    preset.write_text(TEST_PRESET)
    t = root / "teacher"
    common = ["--config", str(preset), "--dataset", str(raw)]
    assert main(["train-teacher", *common, "--out", str(t), "--epochs", "1"]) == 0
    first = json.loads((t / "metrics.json").read_text())["epochs"]
    assert main(["train-teacher", *common, "--out", str(t), "--epochs", "2", "--resume"]) == 0
    s = root / "student"
    assert main(["distill", *common, "--out", str(s), "--epochs", "1", "--teacher",
                 str(t / "checkpoint_final.pt"), "--width", "0.5", "--kd", "logit,sard,ca"]) == 0
    return {"raw": raw, "teacher": t, "student": s, "first": first}


def test_poly_lr_and_sgd_follow_nnunet() -> None:
    assert poly_lr(0, 100, 1e-2) == 1e-2
    assert poly_lr(50, 100, 1e-2) == pytest.approx(1e-2 * 0.5**0.9)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig())
    g = opt.param_groups[0]
    assert (g["momentum"], g["nesterov"], g["weight_decay"], g["lr"]) == (0.99, True, 3e-5, 1e-2)
    assert isinstance(build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(optimizer="adamw")),
                      torch.optim.AdamW)


def test_a_few_iterations_lower_the_loss() -> None:
    torch.manual_seed(0)
    _, _, net = _net()
    y = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
    y[:, :, 4:12, 4:12, 4:12] = 1
    y[:, :, 6:10, 6:10, 6:10] = 2
    y[:, :, 7:9, 7:9, 7:9] = 3
    x = torch.cat([y.float(), (y == 3).float()], 1) + 0.1 * torch.randn(2, 2, 16, 16, 16)
    obj = Objective(4)
    opt = build_optimizer(net.parameters(), OptimConfig())
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss, _ = obj(net(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_resume_continues_from_the_saved_epoch(runs) -> None:
    t = runs["teacher"]
    records = json.loads((t / "metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[0] == runs["first"][0]  # epoch 0 kept, not re-run
    assert load_checkpoint(t / "checkpoint_final.pt").epoch == 2
    assert (t / "metrics.csv").read_text().startswith("epoch,lr,")
    assert (t / "training_curve.png").stat().st_size > 1000
    assert "val_dice" in records[-1]


def test_kd_heads_are_optimized_with_the_student_and_kept_out_of_its_weights(runs) -> None:
    ck = load_checkpoint(runs["student"] / "checkpoint_final.pt")
    student = ck.build_network()
    teacher = load_checkpoint(runs["teacher"] / "checkpoint_final.pt").build_network()
    assert not any("adapter" in k for k in ck.state_dict)
    # the heads as the run initialised them (same seed, same construction order)
    torch.manual_seed(0)
    build_network(ck.network_class_name, ck.arch_kwargs, 2, 4, width_factor=0.5, deep_supervision=True)
    init = KDHeads(student.features_per_stage, teacher.features_per_stage).state_dict()
    assert ck.kd_heads is not None and set(ck.kd_heads) == set(init)
    assert any(not torch.equal(init[k], ck.kd_heads[k]) for k in init)
    n_params = len(list(student.parameters())) + len(init)
    assert sum(len(g["params"]) for g in ck.optimizer["param_groups"]) == n_params
    assert ck.card["provenance"]["kd_method"] == "logit+sard+ca"
    assert ck.width_factor == 0.5
    from distillation.export.card import validate_card

    card = validate_card(ck.card)  # the node's ModelCard accepts it: `distill export` needs no --card
    assert card["patch_size"] == [16, 16, 16] and [x["value"] for x in card["labels"]] == [1, 2, 3]


def test_teacher_stays_frozen_in_eval_mode_during_distillation(runs, tmp_path) -> None:
    ck = load_checkpoint(runs["teacher"] / "checkpoint_final.pt")
    teacher = ck.build_network()
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modes = []
    teacher.encoder.register_forward_hook(lambda m, i, o: modes.append(m.training))
    student = build_network(ck.network_class_name, ck.arch_kwargs, 2, 4, width_factor=0.25,
                            deep_supervision=True)
    heads = KDHeads(student.features_per_stage, teacher.features_per_stage)
    preset = parse_preset({"data": {"patch_size": [16, 16, 16], "batches_per_epoch": 2},
                           "train": {"epochs": 1, "progress": False}})
    plan = DataPlan.load(runs["teacher"] / "preprocessed" / "plan.json")
    cases = load_preprocessed(runs["teacher"] / "preprocessed")
    kd = KDConfig(logit=True, sard=True, ca=True)
    pair = ModelPair(StudentWithHeads(student, heads), teacher)
    data = PatchBatches(cases, (16, 16, 16), 2, 2)
    fit(pair, Objective(4, kd), build_optimizer(pair.model.parameters(), preset.optim), data,
        validation_patches(cases[:1], (16, 16, 16), 1), preset, tmp_path,
        RunSpec(ck.network_class_name, ck.arch_kwargs, 2, plan.num_classes, 0.25))
    assert modes and not any(modes)
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(("kd", "teacher_runs"), [(KDConfig(), False), (KDConfig(logit=True), True)])
def test_the_teacher_runs_only_when_a_kd_term_reads_it(runs, tmp_path, kd, teacher_runs) -> None:
    ck = load_checkpoint(runs["teacher"] / "checkpoint_final.pt")
    teacher = ck.build_network(deep_supervision=False)
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(1))
    student = build_network(ck.network_class_name, ck.arch_kwargs, 2, 4, width_factor=0.5, deep_supervision=True)
    preset = parse_preset({"data": {"patch_size": [16, 16, 16], "batches_per_epoch": 2},
                           "train": {"epochs": 1, "progress": False}})
    cases = load_preprocessed(runs["teacher"] / "preprocessed")
    pair = ModelPair(StudentWithHeads(student), teacher)
    fit(pair, Objective(4, kd), build_optimizer(pair.model.parameters(), preset.optim),
        PatchBatches(cases, (16, 16, 16), 2, 2), [], preset, tmp_path,
        RunSpec(ck.network_class_name, ck.arch_kwargs, 2, 4, 0.5))
    assert len(calls) == (2 if teacher_runs else 0)


def test_bad_preset_key_is_named_and_exits_2(tmp_path, capsys, runs) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearning_rate = 0.1\n")
    rc = main(["train-teacher", "--config", str(bad), "--dataset", str(runs["raw"]), "--out", str(tmp_path)])
    assert rc == 2
    assert "optim.learning_rate is not a known setting in [optim]" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--kd must list terms from logit, sard, ca, got dark"):
        from distillation.config import with_kd_terms

        with_kd_terms(load_preset("brain-tiny"), "logit,dark")


def test_bundled_presets_load() -> None:
    for name in ("brain-tiny", "brain-cpu", "brain-full"):
        p = load_preset(name)
        assert p.name == name
