"""`distill study`: a micro study (3 tiny phantoms, 1 epoch, 1 student) produces the table, the plots and
the measured fields, resumes without retraining, and rejects bad presets with a message naming the key."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from distillation.cli import main  # noqa: E402
from distillation.study import load_study, parse_study, run_study  # noqa: E402
from pacsnode.errors import ConfigError  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.slow]

MICRO = textwrap.dedent("""
    name = "study-micro"
    description = "Micro study for the tests."

    [dataset]
    kind = "brain"
    cases = 3
    test_cases = 1
    spacing = "4"

    [training]
    preset = "brain-tiny"
    teacher_epochs = 1
    student_epochs = 1
    batches_per_epoch = 1
    num_workers = 0

    [students]
    runs = ["0.5:logit"]
    seeds = [0]

    [evaluation]
    threads = 1
    latency_cases = 1
    latency_windows = 1

    [report]
    title = "Micro study"
    stem = "micro"
""")


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("study")
    config = root / "study-micro.toml"
    config.write_text(MICRO)
    work, docs = root / "work", root / "docs"
    assert main(["study", str(config), "--work", str(work), "--docs", str(docs)]) == 0
    return {"config": config, "work": work, "docs": docs}


def test_study_writes_table_and_plots(micro: dict[str, Path]) -> None:
    md = (micro["docs"] / "micro.md").read_text()
    assert "| model | width | KD | seeds | parameters | GFLOPs/window | Dice whole_tumor |" in md
    assert "| teacher | 1 (teacher) | - | 0 |" in md
    assert "| student | 1/2 | logit | 0 |" in md
    assert "## Targets, as measured" in md
    assert "## Failed cases" in md and "| run | failed cases | shared with the teacher |" in md
    assert "Largest-component post-processing (label values): teacher: " in md
    # the voxel baseline, fitted on the study's training cases, is a row of the table and its gate lines
    baseline = json.loads((micro["work"] / "baseline" / "result.json").read_text())
    assert baseline["test_cases"] == json.loads((micro["work"] / "results.json").read_text())["baseline"]["test_cases"]
    assert "| voxel baseline (no network) | - | - | 0 | 0 | - |" in md
    assert "- Gate, teacher ≥ 10 points above the voxel baseline: " in md
    for suffix in ("dice-params", "dice-latency", "curves"):
        png = micro["docs"] / f"micro-{suffix}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png.name})" in md


def test_results_hold_the_measured_fields(micro: dict[str, Path]) -> None:
    results = json.loads((micro["work"] / "results.json").read_text())
    rows = {r["run"]: r for r in results["rows"]}
    assert set(rows) == {"teacher", "w0.5-logit-s0"}
    assert results["pending"] == []
    teacher, student = rows["teacher"], rows["w0.5-logit-s0"]
    for row in (teacher, student):
        assert set(row["dice"]) == {"whole_tumor", "tumor_core", "enhancing"}
        assert set(row["hd95"]) == set(row["dice"])
        assert all(v is None or 0.0 <= v <= 1.0 for v in row["dice"].values())
        assert row["parameters"] > 0 and row["gflops_per_window"] > 0
        assert row["latency_window_s"] > 0 and row["latency_case_s"] > 0
        assert row["windows_per_case"] >= 1 and row["threads"] == 1 and row["cases"] == 1
        assert row["epochs"] == 1 and len(row["curve"]) == 1
        assert Path(row["model"]).is_file()
        assert row["environment"]["torch"] == torch.__version__ and row["environment"]["cpu"]
    assert student["parameters"] < teacher["parameters"]
    assert student["kd"] == "logit" and student["width"] == 0.5
    # post-processing chosen on the run's own validation case, and carried by the scored model's card
    from pacsnode.inference import Model

    for run_dir in (micro["work"] / "teacher", micro["work"] / "students" / "w0.5-logit-s0"):
        post = json.loads((run_dir / "postprocessing.json").read_text())
        assert post["split"] == "Tr" and len(post["cases"]) == 1 and set(post["dice"]) == {"1", "2", "3"}
        assert not (run_dir / "model-no-postprocessing.onnx").exists()
        card = Model.load(run_dir / "model.onnx", threads=1).card
        assert list(card.postprocessing.largest_component) == post["largest_component"]
        row = teacher if run_dir.name == "teacher" else student  # validation Dice as the card runs the model
        kept = [a if int(label) in post["largest_component"] else b for label, (b, a) in post["dice"].items()]
        assert row["val_case_dice"] == pytest.approx(sum(kept) / 3)
    card = json.loads(json.dumps(student))  # the row is plain JSON
    assert card["role"] == "student"
    evaluation = json.loads((micro["work"] / "students" / "w0.5-logit-s0" / "evaluation.json").read_text())
    assert student["case_dice"] == {case: {s: m[s]["dice"] for s in student["structures"]}
                                    for case, m in evaluation["cases"].items()}
    # per case, per seed, per arm: what the study's bootstrap resamples (distillation.study.analysis)
    assert student["case_hd95"] == {case: {s: m[s]["hd95"] for s in student["structures"]}
                                    for case, m in evaluation["cases"].items()}
    assert student["case_lesions"] == {case: {k: d[k] for k in ("all", "small")}
                                       for case, d in evaluation["lesions"]["cases"].items()}
    assert set(student["case_lesions"]) == set(student["case_dice"])
    assert student["small_lesion_f1"] == evaluation["lesions"]["summary"]["small"]["f1"]
    assert student["lesion_settings"]["small_ml"] == 1.0
    from distillation.study.analysis import arm_data

    assert arm_data(results["rows"], 0.5, "logit", "small_lesion_f1").values.shape == (1, 1, 3)
    kept = json.loads((micro["docs"] / "micro-results.json").read_text())  # the rows beside the report
    assert kept == results


def _two_runs(micro: dict[str, Path], tmp_path: Path) -> Path:
    config = tmp_path / "study-micro.toml"  # same study, one run added to the preset
    config.write_text(micro["config"].read_text().replace('runs = ["0.5:logit"]', 'runs = ["0.5:logit", "0.5:none"]'))
    return config


def test_results_file_starts_a_new_work_folder_only_with_the_same_teacher(micro: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    config, work = _two_runs(micro, tmp_path), tmp_path / "work"
    shutil.copytree(micro["work"] / "data", work / "data")
    kept = json.loads((micro["docs"] / "micro-results.json").read_text())
    other = tmp_path / "other-teacher.json"  # the same study, but a teacher that scored otherwise
    other.write_text(json.dumps({**kept, "rows": [
        {**r, "final_val_dice": 0.5, "environment": {**r["environment"], "numpy": "0.0"}} if r["role"] == "teacher"
        else r for r in kept["rows"]]}))
    common = ["study", str(config), "--work", str(work), "--docs", str(tmp_path / "docs")]
    with pytest.raises(ConfigError, match=r"--results needs the teacher trained here to be the one of .*"
                                          r"validation Dice .* vs 0\.5 \(here vs there\).*"
                                          r"\(the environments differ: numpy .* vs 0\.0\)"):
        run_study(load_study(config), work, tmp_path / "docs", results=other)
    assert (work / "teacher" / "checkpoint_final.pt").is_file()  # trained and scored, then refused
    assert not (work / "students").exists()  # nothing taken, nothing distilled from the other teacher

    assert main([*common, "--results", str(micro["docs"] / "micro-results.json")]) == 0
    rows = {r["run"]: r for r in json.loads((work / "results.json").read_text())["rows"]}
    assert set(rows) == {"teacher", "w0.5-logit-s0", "w0.5-none-s0"}
    assert rows["w0.5-logit-s0"]["imported_from"] == str(micro["docs"] / "micro-results.json")
    assert rows["w0.5-logit-s0"]["dice"] == {r["run"]: r for r in kept["rows"]}["w0.5-logit-s0"]["dice"]
    assert not (work / "students" / "w0.5-logit-s0" / "checkpoint_final.pt").exists()  # taken, not retrained
    assert (work / "students" / "w0.5-none-s0" / "checkpoint_final.pt").is_file()  # the new run trained
    assert "imported_from" not in rows["teacher"] and "imported_from" not in rows["w0.5-none-s0"]
    md = (tmp_path / "docs" / "micro.md").read_text()
    assert "Taken as measured from an earlier run of this study" in md and "`w0.5-logit-s0`." in md
    assert "The teacher was trained again here and scored as that run's teacher did" in md
    assert "| w0.5-logit-s0 |" in md  # its failed-cases line, from the per-case Dice its row carries


def test_report_only_from_a_results_file_trains_nothing(micro: dict[str, Path], tmp_path: Path) -> None:
    config, work, docs = _two_runs(micro, tmp_path), tmp_path / "work", tmp_path / "docs"
    assert main(["study", str(config), "--work", str(work), "--docs", str(docs), "--report-only",
                 "--results", str(micro["docs"] / "micro-results.json")]) == 0
    assert not (work / "teacher").exists() and not (work / "students").exists()
    results = json.loads((work / "results.json").read_text())
    assert [r["run"] for r in results["rows"]] == ["teacher", "w0.5-logit-s0"]
    assert results["pending"] == ["w0.5-none-s0"]
    md = (docs / "micro.md").read_text()
    assert "| teacher | 1 (teacher) | - | 0 |" in md and "| student | 1/2 | logit | 0 |" in md
    assert "The teacher was trained again" not in md  # nothing was
    assert "`w0.5-none-s0`" in md.split("## Not finished")[1]


def test_report_holds_only_its_presets_runs_from_a_shared_work_folder(micro: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(micro["work"], work)  # holds the teacher and w0.5-logit-s0, measured
    other = tmp_path / "study-micro-none.toml"  # another preset of the same study: the same teacher, another run
    other.write_text(micro["config"].read_text().replace('runs = ["0.5:logit"]', 'runs = ["0.5:none"]')
                     .replace('stem = "micro"', 'stem = "micro-none"'))
    assert main(["study", str(other), "--work", str(work), "--docs", str(tmp_path), "--report-only"]) == 0
    kept = json.loads((tmp_path / "micro-none-results.json").read_text())
    assert [r["run"] for r in kept["rows"]] == ["teacher"] and kept["pending"] == ["w0.5-none-s0"]
    assert "| student |" not in (tmp_path / "micro-none.md").read_text()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda kept: {**kept, "study": {**kept["study"], "dataset": {**kept["study"]["dataset"], "cases": 4}}},
     r"--results must come from a run of study-micro with the same dataset, got .*'cases': 4"),
    (lambda kept: {**kept, "rows": [r for r in kept["rows"] if r["role"] != "teacher"]},
     r"--results must hold the teacher's row .*got none in"),
    (lambda kept: "not json", r"--results must be a study's results file .*got '.*bad\.json'"),
])
def test_results_file_of_another_study_is_refused(micro: dict[str, Path], tmp_path: Path, edit, message) -> None:
    bad = tmp_path / "bad.json"
    kept = json.loads((micro["docs"] / "micro-results.json").read_text())
    edited = edit(kept)
    bad.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.raises(ConfigError, match=message):
        run_study(load_study(micro["config"]), tmp_path / "work", tmp_path / "docs", results=bad, report_only=True)
    assert not (tmp_path / "docs").exists()


def test_study_resumes_without_retraining(micro: dict[str, Path]) -> None:
    ckpt = micro["work"] / "students" / "w0.5-logit-s0" / "checkpoint_final.pt"
    before = ckpt.stat().st_mtime_ns
    (micro["docs"] / "micro.md").unlink()
    assert main(["study", str(micro["config"]), "--work", str(micro["work"]), "--docs", str(micro["docs"])]) == 0
    assert ckpt.stat().st_mtime_ns == before
    assert (micro["docs"] / "micro.md").is_file()


def test_bundled_study_presets_parse() -> None:
    small = load_study("study-brain-small")
    assert small.dataset.kind == "brain" and small.student_runs()
    full = load_study("study-brain-full")
    assert full.dataset.cases >= 200 and full.dataset.test_cases >= 40
    assert {k.width for k in full.student_runs()} == {0.5, 0.25, 0.125}
    assert {k.kd for k in full.student_runs()} == {"none", "logit", "sard", "ca", "logit+sard+ca"}
    ct = load_study("study-ct-small")
    assert ct.dataset.kind == "ct" and {k.kd for k in ct.student_runs()} == {"none", "logit", "logit+sard+ca"}
    cpu = load_study("study-brain-cpu")
    assert cpu.dataset.tumor_radius_mm == "8,35" and cpu.training.preset == "brain-cpu-adamw"
    assert [k.name for k in cpu.student_runs()][:2] == ["w0.25-none-s0", "w0.25-logit-s0"]
    assert {k.seed for k in cpu.student_runs()} == {0, 1, 2}
    assert {k.kd for k in cpu.student_runs() if k.width == 0.25} == {"none", "logit", "sard", "ca", "logit+sard+ca"}
    big = load_study("study-brain-cpu-200")  # the dataset size at the CPU study's resolution
    assert (big.dataset.cases, big.dataset.test_cases) == (200, 40)
    assert (big.dataset.seed, big.dataset.spacing, big.dataset.tumor_radius_mm) == (1000, "2", "8,35")
    assert big.training.teacher_epochs == 2 * cpu.training.teacher_epochs
    assert {(k.width, k.kd) for k in big.student_runs()} == {  # the whole grid
        (w, kd) for w in (0.5, 0.25, 0.125) for kd in ("none", "logit", "sard", "ca", "logit+sard+ca")}
    assert {(k.kd, k.seed) for k in big.student_runs() if k.width == 0.25} == {  # three seeds, but single feature terms
        (kd, s) for kd in ("none", "ca", "logit+sard+ca") for s in (0, 1, 2)} | {("logit", 0), ("sard", 0)}
    assert {(k.kd, k.seed) for k in big.student_runs() if k.width == 0.5} == {  # three seeds where seed 0 was unclear
        (kd, s) for kd in ("none", "logit") for s in (0, 1, 2)} | {("sard", 0), ("ca", 0), ("logit+sard+ca", 0)}
    assert {k.seed for k in big.student_runs() if k.width == 0.125} == {0}
    assert big.report.stem != cpu.report.stem
    half = load_study("study-brain-cpu-200-half")  # its width-1/2 row, whole, from a teacher of its own
    seeds = load_study("study-brain-cpu-200-half-seeds")  # no KD against logit KD alone at width 1/2, three seeds each
    quarter = load_study("study-brain-cpu-200-quarter-seeds")  # no KD against MS-CA alone at width 1/4, three seeds each
    for study in (half, seeds, quarter):  # so one --work folder serves all the study-brain-cpu-200* presets
        for section in ("dataset", "training", "evaluation"):
            assert study.to_json()[section] == big.to_json()[section], (study.name, section)
    assert {(k.kd, k.seed) for k in half.student_runs()} == {  # the same width-1/2 row
        (k.kd, k.seed) for k in big.student_runs() if k.width == 0.5}
    assert {k.width for k in half.student_runs()} == {0.5}
    assert {(k.width, k.kd, k.seed) for k in seeds.student_runs()} == {
        (0.5, kd, s) for kd in ("none", "logit") for s in (0, 1, 2)}
    assert {(k.width, k.kd, k.seed) for k in quarter.student_runs()} == {
        (0.25, kd, s) for kd in ("none", "ca") for s in (0, 1, 2)}
    stems = [c.report.stem for c in (cpu, big, half, seeds, quarter)]
    assert len(set(stems)) == len(stems), stems  # each report holds only its own runs


def test_runs_option_trains_only_the_named_runs(micro: dict[str, Path], tmp_path: Path) -> None:
    two = tmp_path / "study-micro-two.toml"
    two.write_text(micro["config"].read_text().replace('runs = ["0.5:logit"]', 'runs = ["0.5:logit", "0.5:none"]'))
    common = ["study", str(two), "--work", str(micro["work"]), "--docs", str(tmp_path)]
    assert main([*common, "--runs", "w0.5-logit-s0"]) == 0
    assert not (micro["work"] / "students" / "w0.5-none-s0").exists()
    results = json.loads((micro["work"] / "results.json").read_text())
    assert results["pending"] == ["w0.5-none-s0"]
    assert main([*common, "--runs", "w0.5-nope-s0"]) == 2


@pytest.mark.parametrize(("data", "message"), [
    ({"dataset": {"kindd": "brain"}}, r"dataset\.kindd is not a known setting in \[dataset\]"),
    ({"dataset": {"kind": "liver"}}, r"dataset\.kind must be"),
    ({"students": {"kd": ["logit", "magic"]}}, r"students\.kd must be recipes from none, logit"),
    ({"students": {"runs": ["0.25:logit", "2:none"]}}, r"students\.runs\[1\] must be 'WIDTH:RECIPE'.*got '2:none'"),
    ({"students": {"runs": ["0.25:logit@0,0"]}}, r"students\.runs\[0\] must be .*distinct integer seeds"),
    ({"students": {"runs": ["0.25:logit@x"]}}, r"students\.runs\[0\] must be .*got '0\.25:logit@x'"),
])
def test_bad_study_preset_names_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_study(data)


def test_cli_rejects_unknown_preset(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["study", "study-nope", "--work", str(tmp_path)]) == 2
    assert "CONFIG must be a study preset file or a bundled study preset name, got 'study-nope'" in \
        capsys.readouterr().err


def test_no_measure_trains_and_a_later_call_measures(micro: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(micro["work"] / "data", work / "data")  # the phantoms only: teacher and student train here
    common = ["study", str(micro["config"]), "--work", str(work), "--docs", str(tmp_path / "docs")]
    assert main([*common, "--no-measure"]) == 0
    student = work / "students" / "w0.5-logit-s0"
    assert (work / "teacher" / "checkpoint_final.pt").is_file() and (student / "checkpoint_final.pt").is_file()
    for run_dir in (work / "teacher", student):
        assert not (run_dir / "model.onnx").exists() and not (run_dir / "result.json").exists()
    assert json.loads((work / "results.json").read_text())["pending"] == ["w0.5-logit-s0"]
    before = (student / "checkpoint_final.pt").stat().st_mtime_ns
    assert main(common) == 0
    results = json.loads((work / "results.json").read_text())
    assert {r["run"] for r in results["rows"]} == {"teacher", "w0.5-logit-s0"} and results["pending"] == []
    assert (student / "checkpoint_final.pt").stat().st_mtime_ns == before


def test_no_kd_runs_train_from_the_plan_of_a_teacher_still_training(micro: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "study-micro-none.toml"
    config.write_text(micro["config"].read_text().replace('runs = ["0.5:logit"]', 'runs = ["0.5:logit", "0.5:none"]'))
    work = tmp_path / "work"
    shutil.copytree(micro["work"] / "data", work / "data")
    common = ["study", str(config), "--work", str(work), "--docs", str(tmp_path / "docs"), "--no-measure"]
    assert main([*common, "--runs", "w0.5-none-s0"]) == 2  # no teacher checkpoint yet: a message, no training
    assert not (work / "students" / "w0.5-none-s0").exists()
    (work / "teacher").mkdir()  # a teacher mid-training: its latest checkpoint, no final one
    shutil.copyfile(micro["work"] / "teacher" / "checkpoint_latest.pt", work / "teacher" / "checkpoint_latest.pt")
    assert main([*common, "--runs", "w0.5-none-s0"]) == 0
    assert not (work / "teacher" / "checkpoint_final.pt").exists()  # the teacher was left to its own process
    plan = work / "teacher" / "checkpoint_plan.pt"
    from distillation.checkpoint import load_checkpoint

    student = load_checkpoint(work / "students" / "w0.5-none-s0" / "checkpoint_final.pt")
    assert plan.is_file() and Path(student.card["provenance"]["teacher"]) == plan
    assert not (work / "students" / "w0.5-logit-s0").exists()


def test_a_run_with_its_own_seeds_trains_after_the_shared_seeds() -> None:
    config = parse_study({"students": {"runs": ["0.25:none@0,2", "0.5:logit"], "seeds": [1, 0]}})
    assert [k.name for k in config.student_runs()] == ["w0.5-logit-s1", "w0.25-none-s0", "w0.5-logit-s0",
                                                       "w0.25-none-s2"]
