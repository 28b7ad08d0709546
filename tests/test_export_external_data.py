"""Big models: the exporter writes ONNX external data past a threshold (lowered here so a small student
takes that path), the card records the data file's size and sha256, and the node loads it from the
path on ONNX Runtime and OpenVINO, infers as the one-file export does and refuses other weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from distillation.export import export_onnx, make_card, read_card, write_card  # noqa: E402
from distillation.networks import build_network, default_plans_arch  # noqa: E402
from pacsnode.errors import ModelError  # noqa: E402
from pacsnode.inference import Model  # noqa: E402
from pacsnode.inference.backends import openvino_status  # noqa: E402
from pacsnode.inference.card import ModelCard  # noqa: E402

LABELS = {"background": 0, "edema": 1, "necrotic core": 2, "enhancing tumor": 3}


def _card() -> dict:
    return make_card(name="big", version="0.1.0", channel_names=["T1", "T1ce", "T2", "FLAIR"], labels=LABELS,
                     target_spacing=(2.0, 2.0, 2.0), patch_size=(32, 32, 32),
                     normalization=[{"scheme": "zscore", "use_nonzero_mask": True}] * 4)


def _net() -> torch.nn.Module:
    arch = default_plans_arch((32, 32, 32), (2.0, 2.0, 2.0), 4, 4)
    torch.manual_seed(0)
    return build_network(arch["network_class_name"], arch["arch_kwargs"], 4, 4, width_factor=0.125)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("exports")
    net = _net()
    one = root / "one" / "m.onnx"
    split = root / "split" / "m.onnx"
    export_onnx(net, _card(), one)
    report = export_onnx(net, _card(), split, external_data_bytes=0)
    assert report.max_abs_diff <= 1e-3
    return one, split


def test_external_data_written_and_recorded_in_the_card(exports: tuple[Path, Path]) -> None:
    one, split = exports
    data = split.with_name("m.onnx.data")
    assert not one.with_name("m.onnx.data").exists()
    assert data.stat().st_size > 10 * split.stat().st_size  # the graph file holds no weights
    card = read_card(split)
    import hashlib

    assert card["external_data"] == [{"file": "m.onnx.data", "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
                                      "bytes": data.stat().st_size}]
    assert "external_data" not in read_card(one)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_node_loads_from_the_path_and_infers_as_the_one_file_export(exports: tuple[Path, Path],
                                                                      backend: str) -> None:
    if backend == "openvino" and openvino_status()[0] is None:
        pytest.skip("openvino is not installed")
    one, split = exports
    window = np.random.default_rng(0).standard_normal((1, 4, 32, 32, 32), dtype=np.float32)
    a = Model.load(one, backend=backend)
    b = Model.load(split, backend=backend)
    assert b.backend == backend and b.card.external_data[0].file == "m.onnx.data"
    assert np.array_equal(a.predict(window), b.predict(window))


def test_other_weights_are_refused(exports: tuple[Path, Path], tmp_path: Path) -> None:
    _, split = exports
    copy = tmp_path / "m.onnx"
    copy.write_bytes(split.read_bytes())
    raw = bytearray(split.with_name("m.onnx.data").read_bytes())
    raw[-1] ^= 1
    copy.with_name("m.onnx.data").write_bytes(bytes(raw))
    with pytest.raises(ModelError, match=r"^m.onnx: external data file m.onnx.data must have the sha256 its card "
                                         r"records \([0-9a-f]{12}\.\.\.\), got [0-9a-f]{12}\.\.\.; it is not the "
                                         r"exported weights$"):
        Model.load(copy, backend="onnxruntime")
    copy.with_name("m.onnx.data").write_bytes(bytes(raw) + b"\0")
    with pytest.raises(ModelError, match=rf"^m.onnx: external data file m.onnx.data must have the {len(raw)} bytes "
                                         rf"its card records, got {len(raw) + 1}; copy the model's"):
        Model.load(copy, backend="onnxruntime")


def test_write_card_keeps_the_data_file_and_reexport_removes_a_stale_one(exports: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    _, split = exports
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("m.onnx", "m.onnx.data"):
        (folder / name).write_bytes(split.with_name(name).read_bytes())
    card = read_card(folder / "m.onnx")
    card["description"] = "edited"
    write_card(folder / "m.onnx", card)
    assert (folder / "m.onnx.data").read_bytes() == split.with_name("m.onnx.data").read_bytes()
    assert Model.load(folder / "m.onnx", backend="onnxruntime").card.description == "edited"
    export_onnx(_net(), _card(), folder / "m.onnx", check=False)  # small: one file again
    assert not (folder / "m.onnx.data").exists()
    assert "external_data" not in read_card(folder / "m.onnx")


@pytest.mark.parametrize(("entry", "message"), [
    ({"file": "../w.data", "sha256": "0" * 64, "bytes": 1},
     r"model card field external_data\[0\].file must be a bare file name beside the model file, got '../w.data'"),
    ({"file": "w.data", "sha256": "ABC", "bytes": 1},
     r"model card field external_data\[0\].sha256 must be a sha256 in lower-case hex, got 'ABC'; valid: 64 hex"),
    ({"file": "w.data", "sha256": "0" * 64, "bytes": -1},
     r"model card field external_data\[0\].bytes must be a non-negative integer, got -1"),
])
def test_card_external_data_is_validated(entry: dict, message: str) -> None:
    card = json.loads(json.dumps(_card()))
    card["external_data"] = [entry]
    with pytest.raises(ModelError, match=message):
        ModelCard.from_dict(card)
