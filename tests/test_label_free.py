"""Label-free distillation and the label budget (docs/label-free.md), on tiny toy data (CPU).

One teacher, then three students through ``distill distill``: label-free on a copy of the images
with every label file deleted, KD on unlabelled cases plus a budget of 2 labelled ones, and the
supervised control on the same 2. Label files are counted where they are opened.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import distillation.data.raw as raw_module  # noqa: E402
from distillation.checkpoint import load_checkpoint  # noqa: E402
from distillation.cli import main  # noqa: E402
from distillation.data import DataPlan, PatchBatches, PreprocessedCase, write_toy_dataset  # noqa: E402
from distillation.losses import KDConfig, Objective  # noqa: E402
from distillation.study import parse_study  # noqa: E402
from pacsnode.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.train

PRESET = """
name = "label-free-test"
[data]
patch_size = [16, 16, 16]
batches_per_epoch = 2
val_fraction = 0.4
val_patches_per_case = 1
num_workers = 0
[network]
base_features = 4
max_features = 16
max_stages = 3
[train]
epochs = 1
progress = false
"""
BUDGET = ["toy_000", "toy_001"]  # the first 2 of the training split toy_000..toy_002 (toy_003, 004 validate)
VAL = ["toy_003", "toy_004"]


def _distill(root: Path, name: str, *extra: str) -> tuple[Path, list[str]]:
    """Run ``distill distill`` into ROOT/NAME; returns the folder and the label files it opened."""
    opened: list[str] = []
    real = raw_module._read_nifti

    def spy(path: Path):
        if path.parent.name == "labelsTr":
            opened.append(path.name.split(".")[0])
        return real(path)

    out = root / name
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(raw_module, "_read_nifti", spy)
        assert main(["distill", "--config", str(root / "p.toml"), "--out", str(out), "--teacher",
                     str(root / "teacher" / "checkpoint_final.pt"), "--width", "0.5", *extra]) == 0
    return out, sorted(opened)


def _epochs(out: Path) -> list[dict]:
    return json.loads((out / "metrics.json").read_text())["epochs"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelfree")
    raw = write_toy_dataset(root / "raw", n_cases=5, shape=(20, 20, 20))
    (root / "p.toml").write_text(PRESET)
    assert main(["train-teacher", "--config", str(root / "p.toml"), "--dataset", str(raw),
                 "--out", str(root / "teacher")]) == 0
    scans = root / "scans"  # the hospital's scans: images only, every label deleted from disk
    shutil.copytree(raw, scans)
    shutil.rmtree(scans / "labelsTr")
    free = _distill(root, "free", "--unlabelled", str(scans), "--kd", "logit,sard")
    budget = _distill(root, "budget", "--dataset", str(raw), "--unlabelled", str(raw), "--labelled-cases", "2",
                      "--kd", "logit")
    control = _distill(root, "control", "--dataset", str(raw), "--labelled-cases", "2", "--kd", "")
    return {"root": root, "raw": raw, "scans": scans, "free": free, "budget": budget, "control": control}


def _split(out: Path) -> dict[str, list[str]]:
    return json.loads((out / "run.json").read_text())["split"]


def test_a_label_free_run_reads_no_label_and_has_no_supervised_term(runs) -> None:
    out, opened = runs["free"]
    assert opened == [] and not (runs["scans"] / "labelsTr").exists()
    assert _split(out) == {"train": [], "val": [], "unlabelled": [f"toy_{i:03d}" for i in range(5)]}
    (epoch,) = _epochs(out)
    assert "train_seg" not in epoch and epoch["train_logit"] > 0 and epoch["train_sard"] > 0
    assert epoch["train_total"] == pytest.approx(epoch["train_logit"] + epoch["train_sard"], rel=1e-5)
    card = load_checkpoint(out / "checkpoint_final.pt").card
    assert (card["provenance"]["labelled_cases"], card["provenance"]["unlabelled_cases"]) == (0, 5)


def test_a_teacher_without_a_plan_is_planned_from_its_card(runs, tmp_path) -> None:
    """An imported nnU-Net teacher carries a model card, not a plan: the unlabelled scans are
    preprocessed as its card says, without a label to plan from."""
    root = runs["root"]
    payload = torch.load(root / "teacher" / "checkpoint_final.pt", weights_only=False)
    plan = DataPlan.from_json(payload["extra"].pop("plan"))
    torch.save(payload, tmp_path / "imported.pt")
    out = tmp_path / "student"
    assert main(["distill", "--config", str(root / "p.toml"), "--out", str(out), "--teacher",
                 str(tmp_path / "imported.pt"), "--unlabelled", str(runs["scans"]), "--kd", "logit"]) == 0
    used = DataPlan.load(out / "preprocessed-unlabelled" / "plan.json")
    assert (used.target_spacing, used.normalization, used.patch_size, used.channel_names) == \
        (plan.target_spacing, plan.normalization, plan.patch_size, plan.channel_names)
    assert sorted(used.labels.values()) == sorted(plan.labels.values())


def test_a_budget_of_n_reads_exactly_those_n_labels_besides_validation(runs) -> None:
    out, opened = runs["budget"]
    assert _split(out) == {"train": BUDGET, "val": VAL, "unlabelled": ["toy_002"]}
    assert opened == BUDGET + VAL  # toy_002's label lies on disk and is never opened
    (epoch,) = _epochs(out)
    assert epoch["train_seg"] > 0 and epoch["train_logit"] > 0 and "val_dice" in epoch


def test_the_supervised_control_trains_on_the_same_n_cases_without_the_teacher(runs) -> None:
    out, opened = runs["control"]
    assert _split(out) == {"train": BUDGET, "val": VAL, "unlabelled": []}
    assert opened == BUDGET + VAL
    (epoch,) = _epochs(out)
    assert epoch["train_seg"] > 0 and "train_logit" not in epoch


@pytest.mark.parametrize(("extra", "message"), [
    (["--labelled-cases", "-1", "--unlabelled", "S"], "--labelled-cases must be zero or a positive integer, got -1"),
    (["--unlabelled", "S", "--kd", ""], "--unlabelled trains on the teacher's soft targets, so it needs a KD term "
                                        "(--kd logit, sard or ca, or a preset with one), got none"),
    (["--labelled-cases", "2", "--unlabelled", "S"], "--labelled-cases takes its cases from --dataset, got 2 "
                                                     "without --dataset"),
    (["--kd", "logit"], "--dataset is required unless --unlabelled gives the training images, got neither"),
    (["--dataset", "R", "--labelled-cases", "0", "--kd", "logit"],
     "--labelled-cases 0 leaves nothing to train on without --unlabelled, got no --unlabelled folder"),
    (["--dataset", "R", "--labelled-cases", "4", "--kd", ""],
     "--labelled-cases must be at most the 3 training cases of R (the other 2 validate), got 4"),
    (["--unlabelled", "R/labelsTr", "--kd", "logit"],
     "--unlabelled must hold at least one case (CASE_0000.nii.gz), found none in R/labelsTr"),
])
def test_bad_budgets_are_one_line_errors(runs, capsys, extra, message) -> None:
    root = runs["root"]
    subs = {"S": str(runs["scans"]), "R": str(runs["raw"])}
    extra = [subs.get(a, a.replace("R/", f"{runs['raw']}/")) for a in extra]
    message = message.replace("R/", f"{runs['raw']}/").replace(" R ", f" {runs['raw']} ")
    argv = ["distill", "--config", str(root / "p.toml"), "--out", str(root / "bad"), "--force", "--teacher",
            str(root / "teacher" / "checkpoint_final.pt"), *extra]
    capsys.readouterr()
    assert main(argv) == 2
    assert capsys.readouterr().err == f"distill: error: {message}\n"


def test_mixed_batches_put_the_labelled_cases_where_foreground_is_oversampled() -> None:
    def case(ident: str, labelled: bool) -> PreprocessedCase:
        seg = torch.zeros(16, 16, 16, dtype=torch.int8).numpy()
        seg[6:10, 6:10, 6:10] = 2
        return PreprocessedCase(ident, torch.ones(1, 16, 16, 16).numpy(), seg,
                                {2: torch.tensor([[8, 8, 8]]).numpy()} if labelled else {}, labelled)

    for _x, y in PatchBatches([case("a", True), case("b", False), case("c", False)], (8, 8, 8), 2, 4):
        assert (y[0] == -1).all()  # unlabelled first, labels withheld
        assert (y[1] == 2).any() and (y[1] >= 0).all()  # the labelled sample, centred on its foreground


def test_the_objective_leaves_out_unlabelled_samples_from_the_supervised_term() -> None:
    torch.manual_seed(0)
    outputs = [torch.randn(2, 4, 8, 8, 8), torch.randn(2, 4, 4, 4, 4)]
    teacher = torch.randn(2, 4, 8, 8, 8)
    y = torch.randint(0, 4, (2, 1, 8, 8, 8))
    objective = Objective(4, KDConfig(logit=True))
    mixed = y.clone()
    mixed[0] = -1
    _, parts = objective(outputs, mixed, teacher_outputs=teacher)
    assert parts["seg"] == pytest.approx(float(objective.seg([o[1:] for o in outputs], y[1:])))
    _, parts = objective(outputs, torch.full_like(y, -1), teacher_outputs=teacher)
    assert "seg" not in parts and parts["total"] == pytest.approx(parts["logit"])


def test_a_study_names_label_budget_arms_and_refuses_bad_ones() -> None:
    config = parse_study({"students": {"seeds": [0], "runs": ["0.25:logit:0@0,1", "0.25:none:8@0,1"]}})
    assert [(k.name, k.labels) for k in config.student_runs()] == [
        ("w0.25-logit-l0-s0", 0), ("w0.25-none-l8-s0", 8), ("w0.25-logit-l0-s1", 0), ("w0.25-none-l8-s1", 8)]
    assert parse_study({"students": {"runs": ["0.5:logit"]}}).student_runs()[0].name == "w0.5-logit-s0"
    for bad in ("0.25:none:0", "0.25:logit:-2", "0.25:logit:some"):
        rule = rf"students.runs\[0\] must be 'WIDTH:RECIPE' or 'WIDTH:RECIPE:LABELS'.*got '{bad}'"
        with pytest.raises(ConfigError, match=rule):
            parse_study({"students": {"runs": [bad]}})


def test_a_study_run_with_a_budget_trains_on_that_budget(runs) -> None:
    from distillation.study.runner import _student_row, _train_student

    root = runs["root"]
    config = parse_study({"training": {"preset": str(root / "p.toml")},
                          "students": {"runs": ["0.5:logit:0", "0.5:none:2"]}})
    free, control = config.student_runs()
    for key in (free, control):
        _train_student(config, key, root / "study" / key.name, root / "teacher" / "checkpoint_final.pt", runs["raw"])
    assert _split(root / "study" / free.name) == {"train": [], "val": VAL, "unlabelled": BUDGET + ["toy_002"]}
    assert _split(root / "study" / control.name) == {"train": BUDGET, "val": VAL, "unlabelled": []}
    assert _student_row(control)["label_budget"] == 2 and "label_budget" not in _student_row(
        parse_study({"students": {"runs": ["0.5:none"]}}).student_runs()[0])
