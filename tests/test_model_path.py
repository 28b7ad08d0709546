"""Models are opened from their path, so weights kept as ONNX external data beside the file load too
(a model past protobuf's 2 GB, a big ensemble), and the sha256 covers them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import make_card, threshold_model

from pacsnode.errors import ModelError
from pacsnode.inference import Model


def _external(path: Path, threshold: float) -> Path:
    """The threshold model with its threshold tensor kept in ``NAME.onnx.data`` (ONNX external data)."""
    from onnx.external_data_helper import set_external_data

    model = onnx.load_from_string(threshold_model(None, make_card(), threshold=threshold))
    t = next(i for i in model.graph.initializer if i.name == "t")
    data = np.float32(threshold).tobytes()
    (path.parent / (path.name + ".data")).write_bytes(data)
    t.ClearField("float_data")
    t.raw_data = data
    set_external_data(t, location=path.name + ".data", offset=0, length=len(data))
    t.data_location = onnx.TensorProto.EXTERNAL
    t.ClearField("raw_data")
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
def test_external_data_loads_and_counts_in_the_sha256(tmp_path: Path, backend: str) -> None:
    path = _external(tmp_path / "m.onnx", 2.0)
    assert (tmp_path / "m.onnx.data").stat().st_size > 0
    model = Model.load(path, backend=backend)
    window = np.full((1, 1, 16, 16, 16), 3.0, dtype=np.float32)
    assert float(model.predict(window)[0, 1].max()) == pytest.approx(1.0)  # 3 - threshold 2 from the data file
    (tmp_path / "other").mkdir()
    other = _external(tmp_path / "other" / "m.onnx", 2.5)
    assert other.read_bytes() == path.read_bytes()  # only the data file differs
    assert Model.load(other).sha256 != model.sha256
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(ModelError, match=r"model file must be a valid ONNX model, got m.onnx which ONNX Runtime "
                                         r"refuses"):
        Model.load(path)
