"""Backends and precisions: OpenVINO and ONNX Runtime on the same file, the parity self-check,
reduced precision only with the card's evidence, and ONNX Runtime as the fallback when OpenVINO
does not import."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_models import _finish, make_card, rounding_model
from test_volume import affine_for, write

from distillation.phantoms.dicom import StudyInfo
from pacsnode.config import parse_settings
from pacsnode.errors import ConfigError, ModelError
from pacsnode.inference import Model, run
from pacsnode.inference import model as model_module
from pacsnode.inference.backends import cpu_supports_bf16
from pacsnode.inference.card import ModelCard
from pacsnode.inference.selfcheck import compare, fixed_window
from pacsnode.volume import read_series

REPO = Path(__file__).resolve().parents[1]

EVIDENCE = {"precision": "bf16", "backend": "openvino", "cases": 5, "dataset": "phantoms",
            "dice_change": -0.0004, "worst_dice_change": -0.0011, "voxel_agreement": 0.9996}


def conv_model(path: Path, card: dict, *, channels: int = 2, classes: int = 3, width: int = 8) -> bytes:
    """Three 3-D convolutions with ReLUs and fixed random weights: real arithmetic for the backends."""
    rng = np.random.default_rng(7)
    inits, nodes, prev, cin = [], [], "input", channels
    for i, cout in enumerate((width, width, classes)):
        w = (rng.standard_normal((cout, cin, 3, 3, 3)) / np.sqrt(27 * cin)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(cout)).astype(np.float32), f"b{i}")]
        out = "logits" if i == 2 else f"h{i}"
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [out if i == 2 else f"c{i}"],
                                      pads=[1] * 6))
        if i < 2:
            nodes.append(helper.make_node("Relu", [f"c{i}"], [out]))
        prev, cin = out, cout
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, "z", "y", "x"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes, "z", "y", "x"])
    return _finish(helper.make_graph(nodes, "conv", [x], [y], inits), card, path)


def _conv_file(tmp_path: Path, **card_extra) -> Path:
    path = tmp_path / "conv.onnx"
    conv_model(path, make_card(2, 2, patch_size=(16, 16, 16), **card_extra))
    return path


def test_auto_takes_openvino_after_the_self_check_and_matches_onnxruntime(tmp_path):
    path = _conv_file(tmp_path)
    auto = Model.load(path, threads=1)
    ref = Model.load(path, threads=1, backend="onnxruntime")
    assert (auto.backend, auto.precision) == ("openvino", "fp32")
    assert auto.parity is not None and auto.parity.passed and auto.parity.argmax_agreement >= 0.999
    assert (ref.backend, ref.parity) == ("onnxruntime", None)
    x = np.random.default_rng(3).standard_normal((1, 2, 16, 16, 16)).astype(np.float32)
    a, b = auto.predict(x), ref.predict(x)
    assert a.shape == b.shape == (1, 3, 16, 16, 16)
    assert float(np.abs(a - b).max()) < 1e-3 * float(np.abs(b).max())
    # a window of another shape compiles on demand
    assert auto.predict(x[:, :, :8]).shape == (1, 3, 8, 16, 16)


def test_a_whole_volume_gives_the_same_labels_on_both_backends(tmp_path):
    path = _conv_file(tmp_path)
    rng = np.random.default_rng(5)
    shape = (20, 24, 28)
    aff = affine_for("axial", spacing=(1.0, 1.0, 1.0), shape=shape)
    vols = []
    for name in ("T1", "T1ce"):
        write(tmp_path, name, (100 + 30 * rng.standard_normal(shape)).astype(np.float32), aff,
              study=StudyInfo.synthetic(1, "brain"))
        vols.append(read_series(tmp_path / name))
    a = run(Model.load(path, threads=1), vols).labels
    b = run(Model.load(path, threads=1, backend="onnxruntime"), vols).labels
    assert a.shape == shape and len(np.unique(b)) == 3 and float((a == b).mean()) > 0.999


def test_a_backend_that_fails_the_self_check_is_passed_over_or_refused(tmp_path, monkeypatch):
    path = _conv_file(tmp_path)
    real = model_module.open_openvino

    def broken(*args, **kwargs):  # a runtime that computes something else (the seam: the session)
        runtime = real(*args, **kwargs)
        predict = runtime.predict
        runtime.predict = lambda w: predict(w)[:, ::-1].copy()
        return runtime

    monkeypatch.setattr(model_module, "open_openvino", broken)
    m = Model.load(path, threads=1)
    assert m.backend == "onnxruntime"
    assert len(m.rejected) == 1 and m.rejected[0].startswith("openvino fp32 failed the self-check: argmax agreement")
    with pytest.raises(ModelError, match=r"^backend openvino at fp32 must match ONNX Runtime on the self-check "
                                         r"window, got argmax agreement 0\.\d+ \(needs >= 0.999\).*use backend "
                                         r"onnxruntime$"):
        Model.load(path, threads=1, backend="openvino")


def test_bf16_is_refused_without_evidence_in_the_card(tmp_path):
    path = _conv_file(tmp_path)
    with pytest.raises(ModelError, match=r"^conv.onnx: precision bf16 must be validated in model test-model's card "
                                         r"\(validated_precisions: Dice against fp32 on held-out cases\), got none "
                                         r"for it; valid: fp32$"):
        Model.load(path, precision="bf16")


def test_bf16_with_evidence_runs_on_openvino_where_the_cpu_has_it(tmp_path):
    path = _conv_file(tmp_path, validated_precisions=[EVIDENCE])
    if cpu_supports_bf16():
        m = Model.load(path, threads=1, precision="bf16")
        assert (m.backend, m.precision) == ("openvino", "bf16") and m.parity.passed
        assert m.parity.max_error > 0  # bf16 really ran: fp32 would agree to ~1e-7 here
    else:
        with pytest.raises(ModelError, match=r"needs a backend that supports it and passes the self-check.*"
                                             r"precision bf16 needs a CPU with native bf16"):
            Model.load(path, threads=1, precision="bf16")
    with pytest.raises(ModelError, match=r"^precision bf16 must run on the openvino backend, got backend "
                                         r"onnxruntime, which has no bf16 CPU convolution; valid for onnxruntime: "
                                         r"fp32, int8$"):
        Model.load(path, threads=1, backend="onnxruntime", precision="bf16")


def test_auto_precision_takes_validated_bf16_where_the_cpu_runs_it_else_fp32(tmp_path):
    plain = Model.load(_conv_file(tmp_path), threads=1, precision="auto")
    assert (plain.backend, plain.precision) == ("openvino", "fp32")  # nothing validated: fp32
    (tmp_path / "b").mkdir()
    path = _conv_file(tmp_path / "b", validated_precisions=[EVIDENCE])
    auto = Model.load(path, threads=1, precision="auto")
    if cpu_supports_bf16():
        assert (auto.backend, auto.precision) == ("openvino", "bf16") and auto.parity.passed
    else:
        assert (auto.backend, auto.precision) == ("openvino", "fp32")
        assert auto.rejected[0].startswith("precision bf16 not used: ")
    ort = Model.load(path, threads=1, backend="onnxruntime", precision="auto")
    assert (ort.backend, ort.precision) == ("onnxruntime", "fp32")
    assert ort.rejected[0].startswith("precision bf16 not used: precision bf16 must run on the openvino backend")


def test_int8_needs_an_int8_file_and_an_int8_file_needs_int8(tmp_path):
    path = _conv_file(tmp_path)
    with pytest.raises(ModelError, match=r"^conv.onnx: precision int8 needs an int8 model file \(distill export "
                                         r"--int8\), got the float model test-model; valid: fp32$"):
        Model.load(path, precision="int8")
    card = make_card(2, 2, patch_size=(16, 16, 16))
    card["provenance"]["quantization"] = {"quantized_convs": 3}
    q = tmp_path / "q.onnx"
    conv_model(q, card)
    with pytest.raises(ModelError, match=r"^q.onnx: model test-model is an int8 \(quantized\) file, so it must run "
                                         r"at precision int8, got fp32$"):
        Model.load(q)
    with pytest.raises(ModelError, match=r"^q.onnx: precision int8 must be validated in model test-model's card"):
        Model.load(q, precision="int8")
    card["validated_precisions"] = [{**EVIDENCE, "precision": "int8", "backend": "onnxruntime"}]
    conv_model(q, card)
    m = Model.load(q, threads=1, precision="int8", backend="onnxruntime")
    assert (m.backend, m.precision) == ("onnxruntime", "int8")
    m = Model.load(q, threads=1, precision="auto", backend="onnxruntime")  # an int8 file runs at int8
    assert (m.backend, m.precision) == ("onnxruntime", "int8")


def test_card_evidence_fields_are_validated():
    base = make_card(1, 1)
    card = ModelCard.from_dict({**base, "validated_precisions": [EVIDENCE]})
    assert card.allowed_precisions == ("fp32", "bf16")
    assert ModelCard.from_json(card.to_json()) == card
    for bad, message in [
        ({**EVIDENCE, "precision": "fp16"}, r"validated_precisions\[0\]\.precision must name a precision, got "
                                            r"'fp16'; valid: fp32, bf16, int8"),
        ({**EVIDENCE, "voxel_agreement": 1.5}, r"validated_precisions\[0\]\.voxel_agreement must be a fraction, "
                                               r"got 1.5; valid: a number in \[0, 1\]"),
        ({**EVIDENCE, "cases": 0}, r"validated_precisions\[0\]\.cases must be a positive integer, got 0"),
        ({k: v for k, v in EVIDENCE.items() if k != "dice_change"},
         r"validated_precisions\[0\]\.dice_change is required but missing"),
    ]:
        with pytest.raises(ModelError, match=message):
            ModelCard.from_dict({**base, "validated_precisions": [bad]})
    with pytest.raises(ModelError, match=r"validated_precisions must name each precision once, got "
                                         r'\["bf16", "bf16"\]'):
        ModelCard.from_dict({**base, "validated_precisions": [EVIDENCE, EVIDENCE]})


def test_compare_tolerances():
    ref = np.zeros((1, 2, 4, 4, 4), np.float32)
    ref[:, 1] = np.linspace(-10, 10, 64, dtype=np.float32).reshape(4, 4, 4)
    assert compare(ref + 0.004, ref, "fp32").passed
    assert not compare(ref + 0.06, ref, "fp32").passed  # 0.6 % of the largest logit
    assert compare(ref + 0.3, ref, "bf16").passed and not compare(ref + 0.6, ref, "bf16").passed
    flipped = compare(ref[:, ::-1], ref, "int8")
    assert flipped.argmax_agreement < 0.6 and not flipped.passed
    assert compare(ref[:, 1:] * -1, ref[:, 1:], "fp32", "sigmoid").argmax_agreement == 0.0
    w = fixed_window(4, (8, 16, 16))
    assert w.shape == (1, 4, 8, 16, 16) and w.dtype == np.float32
    np.testing.assert_array_equal(w, fixed_window(4, (8, 16, 16)))


def _settings(**entry):
    doc = tomllib.loads((REPO / "config.toml").read_text())
    doc["models"]["brain-tumor"] = {"file": "builtin:brain-tumor", **entry}
    return parse_settings(doc)


def test_config_names_a_bad_backend_or_precision():
    entry = _settings(backend="openvino", precision="bf16").models["brain-tumor"]
    assert (entry.backend, entry.precision) == ("openvino", "bf16")
    assert _settings().models["brain-tumor"].backend == "auto"
    assert _settings().models["brain-tumor"].precision == "auto"
    with pytest.raises(ConfigError, match=r"models\.brain-tumor\.backend must be one of 'auto', 'openvino', "
                                          r"'onnxruntime', got 'tensorrt'"):
        _settings(backend="tensorrt")
    with pytest.raises(ConfigError, match=r"models\.brain-tumor\.precision must be one of 'auto', 'fp32', 'bf16', "
                                          r"'int8', "
                                          r"got 'fp16'"):
        _settings(precision="fp16")


BLOCKED = textwrap.dedent("""
    import sys
    sys.modules["openvino"] = None  # `import openvino` now raises ImportError, as where it is not installed
    from pacsnode.errors import ModelError
    from pacsnode.inference import Model
    m = Model.load(sys.argv[1], threads=1)
    print("auto", m.backend, m.precision, "|".join(m.rejected))
    try:
        Model.load(sys.argv[1], threads=1, backend="openvino")
    except ModelError as exc:
        print("named", exc)
    print("torch", "torch" in sys.modules)
""")


def test_without_openvino_the_node_runs_on_onnxruntime(tmp_path):
    path = tmp_path / "r.onnx"
    rounding_model(path, make_card(1, 2, patch_size=(8, 8, 8)), classes=3)
    out = subprocess.run([sys.executable, "-c", BLOCKED, str(path)], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == ("auto onnxruntime fp32 openvino: openvino does not import (ModuleNotFoundError: import of "
                        "openvino halted; None in sys.modules)")
    assert lines[1] == ("named backend openvino must be installed, got openvino does not import (ModuleNotFoundError: "
                        "import of openvino halted; None in sys.modules); valid: auto, onnxruntime")
    assert lines[2] == "torch False"


def test_infer_cli_prints_the_runtime_and_refuses_unvalidated_precision(tmp_path, capsys):
    from pacsnode.cli import main

    path = _conv_file(tmp_path)
    rc = main(["model", "info", str(path)])
    out = capsys.readouterr().out
    assert rc == 0 and "  runtime        openvino fp32 (self-check: argmax agreement" in out
    assert "  precisions     fp32 allowed (no reduced precision validated)" in out
    (tmp_path / "b").mkdir()
    path2 = _conv_file(tmp_path / "b", validated_precisions=[EVIDENCE])
    main(["model", "info", str(path2)])
    out = capsys.readouterr().out
    assert ("    bf16  on openvino: Dice change -0.0004 mean, -0.0011 worst label, voxel agreement with fp32 "
            "0.99960, 5 cases of phantoms") in out
    rc = main(["infer", str(tmp_path), "--model", str(path), "--out", str(tmp_path / "o"), "--precision", "bf16"])
    err = capsys.readouterr().err
    assert rc == 2 and err == ("pacsnode: error: conv.onnx: precision bf16 must be validated in model test-model's "
                               "card (validated_precisions: Dice against fp32 on held-out cases), got none for it; "
                               "valid: fp32\n")
