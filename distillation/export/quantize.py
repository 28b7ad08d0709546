"""Optional int8 static quantization (ONNX Runtime QDQ) with a calibration set of preprocessed windows.

DESIGN.md §6: ORT's int8 3-D convolution is slow on narrow, full-resolution layers, so by default
only convolutions with at least ``min_channels`` input *and* output channels are quantized; the
rest stay fp32 (``nodes_to_exclude`` adds explicit exclusions). The card is carried over unchanged
except for ``provenance.quantization``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["QuantizationReport", "WindowReader", "conv_channels", "select_nodes", "quantize_int8",
           "calibration_windows_from_dir", "int8_report"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizationReport:
    path: Path
    quantized_nodes: tuple[str, ...]
    excluded_nodes: tuple[str, ...]
    calibration_windows: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "quantized_nodes": len(self.quantized_nodes),
                "excluded_nodes": len(self.excluded_nodes), "calibration_windows": self.calibration_windows}


class WindowReader:
    """ONNX Runtime ``CalibrationDataReader`` over windows [C, z, y, x] (or [1, C, z, y, x])."""

    def __init__(self, windows: Iterable[np.ndarray], input_name: str = "input") -> None:
        self._windows = [np.asarray(w, dtype=np.float32) for w in windows]
        self._input = input_name
        self._it: Iterator[np.ndarray] = iter(self._windows)

    def __len__(self) -> int:
        return len(self._windows)

    def get_next(self) -> dict[str, np.ndarray] | None:
        w = next(self._it, None)
        if w is None:
            return None
        return {self._input: w if w.ndim == 5 else w[None]}

    def rewind(self) -> None:
        self._it = iter(self._windows)


def conv_channels(onnx_path: str | os.PathLike) -> dict[str, tuple[str, int, int]]:
    """Conv / ConvTranspose node name → (op type, input channels, output channels)."""
    import onnx

    model = onnx.load(str(onnx_path))
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    out: dict[str, tuple[str, int, int]] = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in inits:
            w = inits[node.input[1]]
            cin, cout = (w[1], w[0]) if node.op_type == "Conv" else (w[0], w[1])
            out[node.name] = (node.op_type, int(cin), int(cout))
    return out


def select_nodes(onnx_path: str | os.PathLike, min_channels: int = 16,
                 nodes_to_exclude: Sequence[str] = (), include_transposed: bool = False
                 ) -> tuple[list[str], list[str]]:
    """(nodes to quantize, nodes excluded) by the channel rule above."""
    chosen, excluded = [], []
    for name, (op, cin, cout) in conv_channels(onnx_path).items():
        if name in nodes_to_exclude or min(cin, cout) < min_channels or (op == "ConvTranspose"
                                                                          and not include_transposed):
            excluded.append(name)
        else:
            chosen.append(name)
    return chosen, excluded


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calibration: Iterable[np.ndarray],
                  *, min_channels: int = 16, nodes_to_exclude: Sequence[str] = (),
                  include_transposed: bool = False, per_channel: bool = True) -> QuantizationReport:
    """Static QDQ int8 quantization of ``fp32_path`` into ``out_path`` (card copied over)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from distillation.export.onnx_export import METADATA_KEY, _save_atomic, _set_card

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    reader = WindowReader(calibration)
    if len(reader) == 0:
        raise ValueError("int8 calibration needs at least one window, got none")
    chosen, excluded = select_nodes(fp32_path, min_channels, nodes_to_exclude, include_transposed)
    if not chosen:
        raise ValueError(f"int8 quantization must have at least one convolution with >= {min_channels} "
                         f"channels to quantize, got none in {fp32_path.name}; lower min_channels")
    src = onnx.load(str(fp32_path))
    card = json.loads(next(p.value for p in src.metadata_props if p.key == METADATA_KEY))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ORT suggests pre-processing; the graph is already optimisable
        tmp_out = Path(tmp) / "q.onnx"
        quantize_static(str(fp32_path), str(tmp_out), reader, quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                        nodes_to_quantize=chosen, nodes_to_exclude=excluded,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True})
        q = onnx.load(str(tmp_out))
    card.setdefault("provenance", {})["quantization"] = {
        "format": "QDQ int8", "quantized_convs": len(chosen), "fp32_convs": len(excluded),
        "min_channels": min_channels, "calibration_windows": len(reader)}
    _set_card(q, card)
    _save_atomic(q, out_path)
    log.info("int8: quantized %d convolutions, kept %d in fp32, %d calibration windows", len(chosen),
             len(excluded), len(reader))
    return QuantizationReport(out_path, tuple(chosen), tuple(excluded), len(reader))


def calibration_windows_from_dir(directory: str | os.PathLike, card: dict[str, Any], max_windows: int = 16,
                                 seed: int = 0) -> list[np.ndarray]:
    """Calibration windows from ``directory``: ``*.npy`` / ``*.npz`` arrays already preprocessed
    ([C, z, y, x], cropped to the card's patch), or an nnU-Net raw dataset (``imagesTr`` / ``imagesTs``)
    whose cases are preprocessed with the node's preprocessing and cut into patch-sized windows."""
    directory = Path(directory)
    patch = tuple(int(p) for p in card["patch_size"])
    rng = np.random.default_rng(seed)
    arrays = sorted(directory.glob("*.npy")) + sorted(directory.glob("*.npz"))
    windows: list[np.ndarray] = []
    if arrays:
        for p in arrays[:max_windows]:
            a = np.load(p)
            if isinstance(a, np.lib.npyio.NpzFile):
                a = a[a.files[0]]
            windows.append(_crop(np.asarray(a, dtype=np.float32), patch, rng))
        return windows
    from distillation.evaluate.dataset import iter_cases
    from pacsnode.inference.card import ModelCard
    from pacsnode.inference.preprocessing import preprocess

    model_card = ModelCard.from_dict(card)
    for case in iter_cases(directory, split="Tr" if (directory / "imagesTr").is_dir() else "Ts"):
        images, spacing = case.load_images()
        pre = preprocess(images, spacing, model_card)
        windows.append(_crop(pre.data, patch, rng))
        if len(windows) >= max_windows:
            break
    if not windows:
        raise ValueError(f"calibration directory must hold *.npy/*.npz windows or an nnU-Net dataset, got "
                         f"nothing usable in {directory}")
    return windows


def _crop(a: np.ndarray, patch: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if a.ndim == 5:
        a = a[0]
    pad = [(0, 0)] + [(0, max(0, p - s)) for s, p in zip(a.shape[1:], patch, strict=True)]
    a = np.pad(a, pad)
    lo = [int(rng.integers(0, s - p + 1)) for s, p in zip(a.shape[1:], patch, strict=True)]
    return np.ascontiguousarray(a[:, lo[0]:lo[0] + patch[0], lo[1]:lo[1] + patch[1], lo[2]:lo[2] + patch[2]])


def int8_report(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, windows: Sequence[np.ndarray],
                threads: int = 2) -> dict[str, Any]:
    """fp32 vs int8 on ``windows``: Dice per output class between their argmax maps, voxel agreement and
    ORT seconds per window for each (speed-up = fp32 / int8). For Dice against ground truth run
    ``distill evaluate`` on both files."""
    import time

    import onnxruntime as ort

    def session(path: str | os.PathLike) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])

    s32, s8 = session(fp32_path), session(int8_path)
    t32 = t8 = 0.0
    agree, dice_num, dice_den = [], {}, {}
    for w in windows:
        x = np.asarray(w, dtype=np.float32)
        x = x if x.ndim == 5 else x[None]
        t = time.perf_counter()
        a = s32.run(["logits"], {"input": x})[0].argmax(1)
        t32 += time.perf_counter() - t
        t = time.perf_counter()
        b = s8.run(["logits"], {"input": x})[0].argmax(1)
        t8 += time.perf_counter() - t
        agree.append(float((a == b).mean()))
        for c in np.union1d(np.unique(a), np.unique(b)):
            dice_num[int(c)] = dice_num.get(int(c), 0) + 2 * int(((a == c) & (b == c)).sum())
            dice_den[int(c)] = dice_den.get(int(c), 0) + int((a == c).sum() + (b == c).sum())
    n = max(len(windows), 1)
    return {"windows": len(windows), "voxel_agreement": float(np.mean(agree)) if agree else None,
            "dice_fp32_vs_int8": {c: dice_num[c] / dice_den[c] for c in sorted(dice_num) if dice_den[c]},
            "seconds_per_window_fp32": t32 / n, "seconds_per_window_int8": t8 / n,
            "speedup": (t32 / t8) if t8 > 0 else None}
