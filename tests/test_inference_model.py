"""pacsnode.inference.Model: one ONNX Runtime session, a validated card, refused bad files."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from onnx_models import make_card, rounding_model, threshold_model

from pacsnode.errors import ModelError
from pacsnode.inference import Model


def test_load_reads_card_and_runs(tmp_path):
    path = tmp_path / "m.onnx"
    data = threshold_model(path, make_card(1, 1), threshold=0.5)
    m = Model.load(path, threads=1)
    assert m.card.name == "test-model" and m.sha256 == hashlib.sha256(data).hexdigest()
    assert m.threads == 1 and m.runtime.threads == 1
    x = np.array([0.0, 1.0], np.float32).reshape(1, 1, 1, 1, 2)
    out = m.predict(x)
    assert out.shape == (1, 2, 1, 1, 2)
    np.testing.assert_allclose(out[0, 1].ravel(), [-0.5, 0.5])


def test_corrupt_file_is_refused(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x00garbage, not a protobuf" * 10)
    with pytest.raises(ModelError, match=r"model file must be a valid ONNX model, got bad.onnx which ONNX Runtime refuses"):
        Model.load(path)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "cut.onnx"
    data = threshold_model(None, make_card(1, 1))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"must be a valid ONNX model, got cut.onnx"):
        Model.load(path)


def test_missing_card_is_refused(tmp_path):
    path = tmp_path / "nocard.onnx"
    threshold_model(path, None)
    with pytest.raises(ModelError, match=r"must carry a model card in metadata key 'pacsnode.model_card', "
                                         r"got nocard.onnx with keys none"):
        Model.load(path)


def test_invalid_card_in_file_names_file_and_field(tmp_path):
    card = make_card(1, 1)
    card["patch_size"] = [16, 16, -1]
    path = tmp_path / "m.onnx"
    threshold_model(path, json.dumps(card))
    with pytest.raises(ModelError, match=r"m.onnx: model card field patch_size must hold positive integers"):
        Model.load(path)


def test_channel_mismatch_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    threshold_model(path, make_card(2, 1), channels=1, declared_channels=1)
    with pytest.raises(ModelError, match=r"input 'input' must have 2 input channel\(s\) \(T1, T1ce\) as the "
                                         r"card's inputs say, got 1"):
        Model.load(path)


def test_class_count_mismatch_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    rounding_model(path, make_card(1, 1), classes=4)
    with pytest.raises(ModelError, match=r"output 'logits' must have 2 output channel\(s\) \(1 label\(s\) \+ "
                                         r"background, softmax\) as the card's labels say, got 4"):
        Model.load(path)


def test_wrong_input_name_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    threshold_model(path, make_card(1, 1), input_name="image")
    with pytest.raises(ModelError, match=r"must have one input named 'input', got \['image'\]"):
        Model.load(path)


def test_missing_file_and_builtin(tmp_path):
    with pytest.raises(ModelError, match=r"model file must exist, got .*nothere.onnx"):
        Model.load(tmp_path / "nothere.onnx")
    with pytest.raises(ModelError, match=r"builtin model must be shipped in .*models, got 'builtin:nope' which is "
                                         r"not there; valid: "):
        Model.load("builtin:nope")
