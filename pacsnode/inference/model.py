"""One deployable model: an ONNX Runtime session plus its validated model card."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from pacsnode.errors import ModelError
from pacsnode.inference.card import METADATA_KEY, ModelCard

__all__ = ["Model", "BUILTIN_DIR", "resolve_model_path", "INPUT_NAME", "OUTPUT_NAME"]

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "models"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def resolve_model_path(path: str | Path) -> Path:
    """A file path, or ``builtin:NAME`` → ``pacsnode/models/NAME.onnx`` inside the package."""
    text = str(path)
    if text.startswith("builtin:"):
        name = text[len("builtin:"):]
        file = BUILTIN_DIR / f"{name}.onnx"
        if not file.is_file():
            shipped = sorted(p.stem for p in BUILTIN_DIR.glob("*.onnx")) if BUILTIN_DIR.is_dir() else []
            raise ModelError(
                f"builtin model must be shipped in {BUILTIN_DIR}, got {text!r} which is not there; "
                f"valid: {', '.join('builtin:' + s for s in shipped) if shipped else 'none (no model is shipped yet; pass a file path)'}"
            )
        return file
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"model file must exist, got {str(file)!r}")
    return file


def _dims(shape: list[Any]) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in shape]


@dataclass(frozen=True, eq=False)
class Model:
    """A loaded model. Use :meth:`load`; one session per model, reused for every window."""

    path: Path
    card: ModelCard
    session: ort.InferenceSession
    sha256: str
    threads: int

    @classmethod
    def load(cls, path: str | Path, threads: int = 2) -> Model:
        """Open ``path`` (or ``builtin:NAME``), validate its card and its input/output shapes."""
        if threads < 1:
            raise ModelError(f"threads must be a positive integer, got {threads}")
        file = resolve_model_path(path)
        data = file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
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
            session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"model file must be a valid ONNX model, got {file.name} which ONNX Runtime "
                             f"refuses: {first}") from None
        meta = session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ModelError(f"model file must carry a model card in metadata key {METADATA_KEY!r}, got "
                             f"{file.name} with keys {sorted(meta) or 'none'}; export it with "
                             "distillation.export.export_onnx")
        try:
            card = ModelCard.from_json(meta[METADATA_KEY])
        except ModelError as exc:
            raise ModelError(f"{file.name}: {exc}") from None
        _check_io(session, card, file.name)
        log.info("loaded model %s %s (sha256 %s, %d threads)", card.name, card.version, digest[:12], threads)
        return cls(path=file, card=card, session=session, sha256=digest, threads=int(threads))

    def predict(self, window: np.ndarray) -> np.ndarray:
        """Logits (1, K, z, y, x) for one float32 window (1, C, z, y, x)."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: window})[0]

    def __repr__(self) -> str:
        return f"Model({self.card.name!r} {self.card.version}, {self.path.name}, sha256={self.sha256[:12]})"


def _check_io(session: ort.InferenceSession, card: ModelCard, name: str) -> None:
    inputs = session.get_inputs()
    outputs = session.get_outputs()
    in_names = [i.name for i in inputs]
    out_names = [o.name for o in outputs]
    if in_names != [INPUT_NAME]:
        raise ModelError(f"{name}: the model must have one input named {INPUT_NAME!r}, got {in_names}")
    if OUTPUT_NAME not in out_names:
        raise ModelError(f"{name}: the model must have an output named {OUTPUT_NAME!r}, got {out_names}")
    out = next(o for o in outputs if o.name == OUTPUT_NAME)
    for what, arg, expected, field in (
        ("input", inputs[0], card.channels, "inputs"),
        ("output", out, card.num_outputs, "labels"),
    ):
        dims = _dims(arg.shape)
        if len(dims) != 5:
            raise ModelError(f"{name}: the model {what} {arg.name!r} must be 5-D [1, C, z, y, x], got shape {arg.shape}")
        if dims[1] is not None and dims[1] != expected:
            detail = (f"{card.channels} input channel(s) ({', '.join(card.channel_names)})" if what == "input"
                      else f"{card.num_outputs} output channel(s) ({len(card.labels)} label(s)"
                      + (" + background" if card.activation == "softmax" else "") + f", {card.activation})")
            raise ModelError(f"{name}: the model {what} {arg.name!r} must have {detail} as the card's "
                             f"{field} say, got {dims[1]} in shape {arg.shape}")
        for axis, (d, p) in enumerate(zip(dims[2:], card.patch_size, strict=True)):
            if d is not None and d != p:
                raise ModelError(f"{name}: the model {what} spatial axis {axis} must be dynamic or the card's "
                                 f"patch size {p}, got {d} in shape {arg.shape}")
