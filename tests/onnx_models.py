"""Tiny ONNX models with known outputs, built with the ``onnx`` helper API (no torch).

``threshold_model``: logits = [0, x0 - t, x1... ignored] so the label is 1 exactly where
normalized channel 0 exceeds t. ``rounding_model``: logits_k = -(x0 - k)^2, so the label
is round(x0) clipped to [0, K-1]. ``sum_model``: logits = [0, x0 + x1 + ... - t].
``make_card`` builds a valid model card dict that tests adjust.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CARD_KEY = "pacsnode.model_card"

_CODES = {
    1: ("Edema", "49755003", "Morphologically Altered Structure", "79654002", "Edema"),
    2: ("Necrotic core", "49755003", "Morphologically Altered Structure", "6574001", "Necrosis"),
    3: ("Enhancing tumor", "49755003", "Morphologically Altered Structure", "108369006", "Neoplasm"),
    4: ("Label 4", "123037004", "Anatomical Structure", "10200004", "Liver"),
}


def make_card(
    channels: int = 1,
    labels: int = 1,
    *,
    modality: str = "MR",
    names: list[str] | None = None,
    target_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    patch_size: tuple[int, int, int] = (16, 16, 16),
    normalization: list[dict[str, Any]] | None = None,
    crop_to_nonzero: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A valid card dict. Default normalization is the identity ("ct" with mean 0, std 1, wide clip)."""
    names = names or (["T1", "T1ce", "T2", "FLAIR"][:channels] if channels <= 4 else [f"C{i}" for i in range(channels)])
    card = {
        "schema": "pacsnode.model_card/1",
        "name": "test-model",
        "version": "0.0.1",
        "description": "a test model with a known output",
        "intended_use": "Tests only. Not for clinical use.",
        "inputs": [{"name": n, "modality": modality, "series_description": f"^{n}$"} for n in names],
        "target_spacing": list(target_spacing),
        "patch_size": list(patch_size),
        "normalization": normalization or [{"scheme": "ct", "clip": [-1e6, 1e6], "mean": 0.0, "std": 1.0}] * channels,
        "crop_to_nonzero": crop_to_nonzero,
        "tile_step": 0.5,
        "mirror_axes": [],
        "activation": "softmax",
        "labels": [
            {"value": v, "name": _CODES[v][0],
             "category": {"scheme": "SCT", "value": _CODES[v][1], "meaning": _CODES[v][2]},
             "type": {"scheme": "SCT", "value": _CODES[v][3], "meaning": _CODES[v][4]},
             "color": [255, 255 - 60 * v, 0]}
            for v in range(1, labels + 1)
        ],
        "postprocessing": {"largest_component": []},
        "provenance": {"teacher": "none", "width_factor": 0.0, "kd_method": "none", "parameters": 0,
                       "dataset": "synthetic-test", "validation": {}},
    }
    card.update(copy.deepcopy(extra))
    return card


def _io(channels: int | str, classes: int | str, spatial: tuple = ("z", "y", "x")):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, *spatial])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes, *spatial])
    return x, y


def _finish(graph: onnx.GraphProto, card: dict[str, Any] | str | None, path: Path | None) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if card is not None:
        entry = model.metadata_props.add()
        entry.key = CARD_KEY
        entry.value = card if isinstance(card, str) else json.dumps(card)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def _channel0(nodes: list, inits: list) -> str:
    inits += [numpy_helper.from_array(np.array([0], np.int64), "c_start"),
              numpy_helper.from_array(np.array([1], np.int64), "c_end"),
              numpy_helper.from_array(np.array([1], np.int64), "c_axis")]
    nodes.append(helper.make_node("Slice", ["input", "c_start", "c_end", "c_axis"], ["x0"]))
    return "x0"


def threshold_model(path: Path | None, card: dict[str, Any] | str | None, *, channels: int = 1,
                    threshold: float = 0.0, declared_channels: int | str | None = None,
                    declared_classes: int | str | None = None, input_name: str = "input") -> bytes:
    """2 classes: label 1 where channel 0 > ``threshold``."""
    nodes: list = []
    inits: list = [numpy_helper.from_array(np.array(threshold, np.float32), "t"),
                   numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    x0 = _channel0(nodes, inits)
    nodes += [helper.make_node("Sub", [x0, "t"], ["fg"]),
              helper.make_node("Mul", [x0, "zero"], ["bg"]),
              helper.make_node("Concat", ["bg", "fg"], ["logits"], axis=1)]
    x, y = _io(declared_channels if declared_channels is not None else channels,
               declared_classes if declared_classes is not None else 2)
    if input_name != "input":
        for n in nodes:
            n.input[:] = [input_name if i == "input" else i for i in n.input]
        x.name = input_name
    return _finish(helper.make_graph(nodes, "threshold", [x], [y], inits), card, path)


def rounding_model(path: Path | None, card: dict[str, Any] | None, *, classes: int, channels: int = 1) -> bytes:
    """K classes: logits_k = -(x0 - k)^2, i.e. label round(x0) clipped to [0, K-1]."""
    nodes: list = []
    ks = np.arange(classes, dtype=np.float32).reshape(1, classes, 1, 1, 1)
    inits: list = [numpy_helper.from_array(ks, "ks")]
    x0 = _channel0(nodes, inits)
    nodes += [helper.make_node("Sub", [x0, "ks"], ["d"]),
              helper.make_node("Mul", ["d", "d"], ["d2"]),
              helper.make_node("Neg", ["d2"], ["logits"])]
    x, y = _io(channels, classes)
    return _finish(helper.make_graph(nodes, "rounding", [x], [y], inits), card, path)


def sum_model(path: Path | None, card: dict[str, Any] | None, *, channels: int, threshold: float = 0.0) -> bytes:
    """2 classes: label 1 where the sum of all channels > ``threshold``."""
    inits = [numpy_helper.from_array(np.array(threshold, np.float32), "t"),
             numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = [helper.make_node("ReduceSum", ["input", "axes"], ["s"], keepdims=1),
             helper.make_node("Sub", ["s", "t"], ["fg"]),
             helper.make_node("Mul", ["s", "zero"], ["bg"]),
             helper.make_node("Concat", ["bg", "fg"], ["logits"], axis=1)]
    x, y = _io(channels, 2)
    return _finish(helper.make_graph(nodes, "sum", [x], [y], inits), card, path)
