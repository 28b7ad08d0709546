"""The runtimes that execute a model's ONNX graph: OpenVINO and ONNX Runtime, behind one interface.

A :class:`Runtime` maps one float32 window ``(1, C, z, y, x)`` to logits ``(1, K, z, y, x)``.
Both read the same ONNX file with its card. ONNX Runtime is a hard dependency and the
reference (fp32); OpenVINO is used when it imports and the CPU supports the precision asked
for. Precisions:

========  ==========================================  ======================================
          ONNX Runtime                                OpenVINO
========  ==========================================  ======================================
fp32      float graph                                 float graph, ``INFERENCE_PRECISION_HINT f32``
bf16      refused (no bf16 convolution kernels)       float graph, hint ``bf16`` (CPU with BF16)
int8      an int8 (QDQ) file from ``distill export``  the same QDQ file (int8 where quantized)
========  ==========================================  ======================================
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pacsnode.errors import ModelError

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "AUTO_ORDER",
    "Runtime",
    "OnnxRuntimeRuntime",
    "OpenVinoRuntime",
    "open_onnxruntime",
    "open_openvino",
    "openvino_status",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "openvino", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "int8")
AUTO_ORDER = ("openvino", "onnxruntime")
"""Fastest first, as measured by benchmarks/inference.py (docs/inference.md); ``auto`` takes the
first installed backend that supports the precision and passes the parity self-check."""

BF16_ON_ONNXRUNTIME = ("precision bf16 must run on the openvino backend, got backend onnxruntime, which has "
                       "no bf16 CPU convolution; valid for onnxruntime: fp32, int8")
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class Runtime(Protocol):
    """One loaded graph on one backend at one precision."""

    name: str
    precision: str
    threads: int

    def predict(self, window: np.ndarray) -> np.ndarray:
        """Logits (1, K, z, y, x) float32 for one float32 window (1, C, z, y, x)."""
        ...


# ------------------------------------------------------------------------------ ONNX Runtime
@dataclass(eq=False)
class OnnxRuntimeRuntime:
    """An ONNX Runtime CPU session (the reference backend)."""

    session: Any
    precision: str
    threads: int
    name: str = "onnxruntime"

    def predict(self, window: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: window})[0]

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)


def open_onnxruntime(data: bytes | str | Path, file_name: str, threads: int, precision: str) -> OnnxRuntimeRuntime:
    """An ORT session on a model file's path (or its bytes); a file ORT cannot read is one :class:`ModelError`.

    A path lets ONNX Runtime read weights kept as external data beside the file (a model past
    protobuf's 2 GB limit, a five-fold ensemble) and map them instead of copying the file into memory.
    """
    import onnxruntime as ort

    if precision == "bf16":
        raise ModelError(BF16_ON_ONNXRUNTIME)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # no arena: activations of a 128³ window are freed after each run instead of being held
    # for the rest of the job (peak memory matters more than the small allocation cost here)
    opts.enable_cpu_mem_arena = False
    try:
        source = str(data) if isinstance(data, Path) else data
        session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model file must be a valid ONNX model, got {file_name} which ONNX Runtime "
                         f"refuses: {first}") from None
    return OnnxRuntimeRuntime(session=session, precision=precision, threads=int(threads))


# ---------------------------------------------------------------------------------- OpenVINO
_OV: dict[str, Any] = {}


def openvino_status() -> tuple[Any, str]:
    """``(openvino module or None, why not)``; the import is tried once per process."""
    if "module" not in _OV:
        try:
            import openvino

            _OV["module"], _OV["why"] = openvino, ""
        except Exception as exc:  # ImportError, or a shared library that does not load
            _OV["module"], _OV["why"] = None, f"openvino does not import ({type(exc).__name__}: {exc})"
    return _OV["module"], _OV["why"]


def _core() -> Any:
    if "core" not in _OV:
        ov, why = openvino_status()
        if ov is None:
            raise ModelError(f"backend openvino must be installed, got {why}; valid: auto, onnxruntime")
        _OV["core"] = ov.Core()
    return _OV["core"]


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin reports native bf16 (AVX512-BF16 or AMX)."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@dataclass(eq=False)
class OpenVinoRuntime:
    """An OpenVINO CPU graph compiled static for the card's window (other shapes compiled on demand)."""

    model: Any
    precision: str
    threads: int
    config: dict[str, Any]
    name: str = "openvino"
    _compiled: dict[tuple[int, ...], Any] = field(default_factory=dict)

    def _request(self, shape: tuple[int, ...]) -> Any:
        request = self._compiled.get(shape)
        if request is None:
            core = _core()
            model = self.model.clone()
            model.reshape({INPUT_NAME: list(shape)})
            compiled = core.compile_model(model, "CPU", self.config)
            request = compiled.create_infer_request()
            if len(self._compiled) >= 4:  # a window shape other than the card's is rare: keep few
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[shape] = request
        return request

    def predict(self, window: np.ndarray) -> np.ndarray:
        request = self._request(tuple(int(s) for s in window.shape))
        request.infer({0: window}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()

    def metadata(self) -> dict[str, str]:
        info = self.model.get_rt_info()
        if "framework" not in info:
            return {}
        return {k: str(v) for k, v in info["framework"].astype(dict).items()}


def open_openvino(path: Path, threads: int, precision: str, window: Sequence[int]) -> OpenVinoRuntime:
    """Read the ONNX file with OpenVINO and compile it for ``window`` (1, C, z, y, x) on the CPU."""
    core = _core()
    if precision == "bf16" and not cpu_supports_bf16():
        caps = ", ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        raise ModelError(f"precision bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX), got one with {caps}; "
                         "valid here: fp32")
    try:
        model = core.read_model(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model file must be readable by OpenVINO, got {path.name}: {first}") from None
    # no pinning: the node's own threads (receive, SEG writing) share these cores, and a pinned
    # thread waiting for a busy core stalls every layer (measured: 32³ window 57 ms pinned vs 33 ms
    # unpinned with two other processes busy on the 2 cores)
    config = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    runtime = OpenVinoRuntime(model=model, precision=precision, threads=int(threads), config=config)
    try:
        runtime._request(tuple(int(s) for s in window))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model {path.name} must compile on OpenVINO's CPU plugin for window "
                         f"{list(window)}, got: {first}") from None
    return runtime
