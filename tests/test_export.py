"""distillation.export: torch vs ONNX Runtime round trip, card embedding, KD adapters stripped, int8, and the
exported student through `distill export`, `pacsnode model check` and `pacsnode infer`."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from distillation.checkpoint import save_checkpoint  # noqa: E402
from distillation.cli import main as distill_main  # noqa: E402
from distillation.export import export_onnx, int8_report, make_card, quantize_int8, read_card  # noqa: E402
from distillation.networks import build_network, default_plans_arch  # noqa: E402
from pacsnode.errors import ModelError  # noqa: E402
from pacsnode.inference import Model  # noqa: E402

BRAIN_LABELS = {"background": 0, "edema": 1, "necrotic core": 2, "enhancing tumor": 3}
CHANNELS = ["T1", "T1ce", "T2", "FLAIR"]


def _arch(patch: tuple[int, int, int] = (32, 32, 32)) -> dict:
    return default_plans_arch(patch, (2.0, 2.0, 2.0), 4, 4)


def _card(patch: tuple[int, int, int] = (32, 32, 32)) -> dict:
    return make_card(name="brain-tumor-student", version="0.1.0", channel_names=CHANNELS, labels=BRAIN_LABELS,
                     target_spacing=(2.0, 2.0, 2.0), patch_size=patch,
                     normalization=[{"scheme": "zscore", "use_nonzero_mask": True}] * 4,
                     provenance={"width_factor": 0.125, "kd_method": "logit"})


def _student(width: float = 0.125) -> torch.nn.Module:
    arch = _arch()
    torch.manual_seed(0)
    return build_network(arch["network_class_name"], arch["arch_kwargs"], 4, 4, width_factor=width)


class KDPair(torch.nn.Module):
    """A student with KD adapters attached, as a training wrapper might hold them."""

    def __init__(self, student: torch.nn.Module) -> None:
        super().__init__()
        self.student = student
        self.adapters = torch.nn.ModuleList(torch.nn.Conv3d(c, 2 * c, 1) for c in student.features_per_stage)


def test_round_trip_card_and_dynamic_axes(tmp_path: Path) -> None:
    student = _student()
    report = export_onnx(KDPair(student), _card(), tmp_path / "s.onnx")
    assert report.max_abs_diff < 1e-3 and report.argmax_agreement >= 0.999
    assert report.parameters == sum(p.numel() for p in student.parameters())  # adapters stripped
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["logits"]
    card = read_card(tmp_path / "s.onnx")
    assert card["name"] == "brain-tumor-student" and card["labels"][2]["type"]["value"] == "108369006"
    x = np.random.default_rng(1).standard_normal((1, 4, 64, 32, 96), dtype=np.float32)  # another shape
    got = sess.run(["logits"], {"input": x})[0]
    student.eval()
    student.decoder.deep_supervision = False
    with torch.no_grad():
        ref = student(torch.from_numpy(x)).numpy()
    assert got.shape == (1, 4, 64, 32, 96)
    assert float(np.abs(got - ref).max()) < 1e-3
    assert float((got.argmax(1) == ref.argmax(1)).mean()) > 0.999
    assert student.decoder.deep_supervision is False  # the caller's network is left as it was (copy exported)


def test_card_must_match_network(tmp_path: Path) -> None:
    bad = _card()
    bad["labels"] = bad["labels"][:2]
    with pytest.raises(ModelError, match="card's labels must give the network's 4 output channels"):
        export_onnx(_student(), bad, tmp_path / "x.onnx")
    bad = _card()
    bad["normalization"] = [{"scheme": "zscore"}] * 3
    with pytest.raises(ModelError, match="normalization must be a list with one entry per input"):
        export_onnx(_student(), bad, tmp_path / "x.onnx")


def test_int8_keeps_card_and_runs(tmp_path: Path) -> None:
    export_onnx(_student(0.25), _card(), tmp_path / "s.onnx")
    rng = np.random.default_rng(0)
    windows = [rng.standard_normal((4, 32, 32, 32), dtype=np.float32) for _ in range(2)]
    report = quantize_int8(tmp_path / "s.onnx", tmp_path / "s8.onnx", windows, min_channels=16)
    assert report.quantized_nodes and report.excluded_nodes
    with pytest.raises(ModelError, match=r"s8.onnx: model brain-tumor-student is an int8 \(quantized\) file, so it "
                                         r"must run at precision int8, got fp32"):
        Model.load(tmp_path / "s8.onnx")  # the node runs an int8 file only at int8, with the card's evidence
    model = Model.load(tmp_path / "s8.onnx", precision="int8", measuring_evidence=True)
    assert model.card.provenance["quantization"]["quantized_convs"] == len(report.quantized_nodes)
    assert model.predict(windows[0][None]).shape == (1, 4, 32, 32, 32)
    cmp = int8_report(tmp_path / "s.onnx", tmp_path / "s8.onnx", windows[:1])
    # random weights, seeded: 0.964 of voxels agree here; trained students agree more
    assert cmp["windows"] == 1 and cmp["voxel_agreement"] >= 0.95 and cmp["speedup"] > 0
    logits = [ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input": windows[0][None]})[0] for f in ("s.onnx", "s8.onnx")]
    assert np.abs(logits[0] - logits[1]).max() <= 0.1 * np.abs(logits[0]).max()  # 0.44 of 6.2 here
    assert stat.S_IMODE((tmp_path / "s8.onnx").stat().st_mode) == 0o666 & ~_umask()
    with pytest.raises(ValueError, match="at least one convolution with >= 4096 channels"):
        quantize_int8(tmp_path / "s.onnx", tmp_path / "s9.onnx", windows, min_channels=4096)


def test_distill_export_then_pacsnode_check_and_infer(tmp_path: Path, capsys) -> None:
    from distillation.phantoms import generate_brain_case
    from distillation.phantoms.dicom import write_study
    from pacsnode.cli import main as pacsnode_main

    arch = _arch()
    student = _student()
    ckpt = save_checkpoint(tmp_path / "student.pt", student, network_class_name=arch["network_class_name"],
                           arch_kwargs=arch["arch_kwargs"], input_channels=4, num_classes=4, width_factor=0.125,
                           card=_card(), epoch=1, kd_heads=KDPair(student).adapters)
    out = tmp_path / "student.onnx"
    assert distill_main(["export", str(ckpt), "--out", str(out), "--version", "0.2.0"]) == 0
    card = read_card(out)
    assert card["version"] == "0.2.0" and card["provenance"]["parameters"] == sum(
        p.numel() for p in student.parameters())
    assert pacsnode_main(["model", "check", str(out)]) == 0

    case = generate_brain_case(3, spacing=(4.0, 4.0, 4.0))
    series = write_study(case, tmp_path / "study")
    result = tmp_path / "result"
    rc = pacsnode_main(["infer", "--model", str(out), "--out", str(result), "--no-progress",
                        *[str(Path(files[0]).parent) for files in series.values()]])
    assert rc == 0
    assert any(result.iterdir())
    assert card["labels"][0]["name"] == "Edema" and card["inputs"][0]["series_description"] == "^T1$"

    # A site whose scanner names series "AX T1 MPRAGE" etc.: the default selectors find none of them
    site_study = tmp_path / "site-study"
    for channel, files in series.items():
        for f in files:
            ds = pydicom.dcmread(f)
            ds.SeriesDescription = SCANNER_NAMES[channel]
            target = site_study / Path(f).parent.name / Path(f).name
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target)
    series_dirs = [str(d) for d in sorted(site_study.iterdir())]
    assert pacsnode_main(["infer", "--model", str(out), "--out", str(tmp_path / "r0"), "--no-progress",
                          *series_dirs]) == 2
    # ... so the model is exported with the site's selectors, a label code and a partial card merged
    patch = tmp_path / "site.json"
    patch.write_text(json.dumps({"description": "Site build for scanner AX names.",
                                 "inputs": [{"name": "T2", "series_description": "(?i)^ax t2 tse$"}],
                                 "labels": [{"value": 3, "color": [10, 20, 30]}],
                                 "provenance": {"site": "radiology 2"}}))
    site = tmp_path / "site.onnx"
    capsys.readouterr()
    old = os.umask(0o022)
    try:
        assert distill_main(["export", str(ckpt), "--out", str(site), "--merge-card", str(patch),
                             "--input-selector", "T1=(?i)^ax t1 mprage$", "--input-selector",
                             "t1ce=(?i)^ax t1 mprage (gd|post)", "--input-selector", "FLAIR=(?i)flair",
                             "--label-code", "Edema=SCT:79654002:Oedema", "--label-category",
                             "2=SCT:49755003:Morphologically abnormal structure"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(site.stat().st_mode) == 0o644  # the node's service user reads it
    card = read_card(site)
    assert [c["series_description"] for c in card["inputs"]] == [
        "(?i)^ax t1 mprage$", "(?i)^ax t1 mprage (gd|post)", "(?i)^ax t2 tse$", "(?i)flair"]
    assert card["labels"][0]["type"] == {"scheme": "SCT", "value": "79654002", "meaning": "Oedema"}
    assert card["labels"][1]["category"]["meaning"] == "Morphologically abnormal structure"
    assert card["labels"][2]["color"] == [10, 20, 30] and card["labels"][2]["name"] == "Enhancing tumor"
    assert card["description"] == "Site build for scanner AX names."
    assert card["provenance"]["site"] == "radiology 2" and card["provenance"]["kd_method"] == "logit"
    shown = capsys.readouterr().out.splitlines()
    assert shown[5:7] == ["input T1     (?i)^ax t1 mprage$", "input T1ce   (?i)^ax t1 mprage (gd|post)"]
    assert shown[9] == 'label 1      Edema: SCT 79654002 "Oedema"'
    rc = pacsnode_main(["infer", "--model", str(site), "--out", str(tmp_path / "r1"), "--no-progress", "--seg", "binary",
                        *series_dirs])
    assert rc == 0
    [seg_file] = (tmp_path / "r1").glob("*_seg.dcm")
    segment = pydicom.dcmread(seg_file).SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Oedema"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


SCANNER_NAMES = {"T1": "AX T1 MPRAGE", "T1ce": "AX T1 MPRAGE POST", "T2": "AX T2 TSE", "FLAIR": "AX FLAIR"}


def test_card_edits_refuse_what_the_card_does_not_have(tmp_path: Path, capsys) -> None:
    arch = _arch()
    ckpt = save_checkpoint(tmp_path / "student.pt", _student(), network_class_name=arch["network_class_name"],
                           arch_kwargs=arch["arch_kwargs"], input_channels=4, num_classes=4, width_factor=0.125,
                           card=_card())
    out = tmp_path / "x.onnx"
    cases = [
        (["--input-selector", "T3=x"], "--input-selector must name an input channel of the card, got 'T3'; "
                                       "valid: T1, T1ce, T2, FLAIR"),
        (["--input-selector", "T1"], "--input-selector must be NAME=REGEX, e.g. 'T1=(?i)mprage', got 'T1'"),
        (["--input-selector", "T1=(unclosed"], "--input-selector T1 must give a valid regular expression "
                                               "(missing ), unterminated subpattern at position 0), got '(unclosed'"),
        (["--label-code", "Edema=SCT:79654002"], "--label-code must be LABEL=SCHEME:VALUE:MEANING, e.g. "
                                                 "'Edema=SCT:79654002:Edema', got 'Edema=SCT:79654002'"),
        (["--label-category", "7=SCT:1:x"], "--label-category must name a label of the card by value or name, got "
                                            "'7'; valid: 1 (Edema), 2 (Necrotic core), 3 (Enhancing tumor)"),
        (["--merge-card", str(tmp_path / "none.json")], "--merge-card must be an existing JSON file, got "
                                                        f"'{tmp_path / 'none.json'}'"),
    ]
    for extra, message in cases:
        assert distill_main(["export", str(ckpt), "--out", str(out), *extra]) == 2, extra
        assert capsys.readouterr().err == f"distill: error: {message}\n"
    patch = tmp_path / "p.json"
    patch.write_text(json.dumps({"labels": [{"value": 9, "color": [1, 2, 3]}]}))
    assert distill_main(["export", str(ckpt), "--out", str(out), "--merge-card", str(patch)]) == 2
    assert capsys.readouterr().err == ("distill: error: --merge-card labels entries must match the card's by "
                                       "value, got 9; valid: 1, 2, 3\n")
    patch.write_text(json.dumps({"inputs": [{"name": "T1", "selector": "x"}]}))
    assert distill_main(["export", str(ckpt), "--out", str(out), "--merge-card", str(patch)]) == 2
    assert capsys.readouterr().err == ("distill: error: model card field inputs[0].selector is not a known key, "
                                       "got 'selector'; valid: name, modality, series_description\n")
    assert not out.exists()
