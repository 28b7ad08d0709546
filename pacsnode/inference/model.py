"""One deployable model: its validated card and the runtime chosen for it (OpenVINO or ONNX Runtime).

``Model.load(path, backend=, precision=)``: ONNX Runtime always opens the file first (it is
the reference and the fallback, and its refusals name the problem); the card must allow the
precision (:meth:`ModelCard.check_precision`). ``backend="auto"`` then tries the installed
backends fastest first (:data:`~pacsnode.inference.backends.AUTO_ORDER`) and takes the first
that supports the precision and passes the parity self-check (:mod:`pacsnode.inference.selfcheck`)
against ONNX Runtime on a fixed window; a named backend must pass the same check or the load is
refused. ONNX Runtime at the file's own precision is the reference and is not checked.
``precision="auto"`` (the node's default) takes the fastest precision the card validated that a
backend here runs and passes the check: bf16, then fp32 (:func:`auto_precisions`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pacsnode.errors import ModelError
from pacsnode.inference.backends import (
    AUTO_ORDER,
    BACKENDS,
    BF16_ON_ONNXRUNTIME,
    INPUT_NAME,
    OUTPUT_NAME,
    Runtime,
    open_onnxruntime,
    open_openvino,
    openvino_status,
)
from pacsnode.inference.card import METADATA_KEY, ModelCard
from pacsnode.inference.cascade import previous_stage_path
from pacsnode.inference.external_data import external_data_files, file_digests, verify_external_data
from pacsnode.inference.selfcheck import Parity, compare, fixed_window

__all__ = ["Model", "auto_precisions", "BUILTIN_DIR", "resolve_model_path", "file_sha256", "external_data_files", "INPUT_NAME",
           "OUTPUT_NAME"]

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "models"


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


def file_sha256(file: Path) -> str:
    """sha256 of the model file, then of its external data (read in 1 MiB blocks, never whole)."""
    return file_digests(file)[0]


def _dims(shape: list[Any]) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in shape]


@dataclass(frozen=True, eq=False)
class Model:
    """A loaded model. Use :meth:`load`; one runtime per model, reused for every window.

    ``runtime.name`` / ``runtime.precision`` say what runs it; ``parity`` is the self-check
    that admitted it (None for the reference, ONNX Runtime at the file's precision);
    ``rejected`` lists backends ``auto`` passed over, with the reason.
    """

    path: Path
    card: ModelCard
    runtime: Runtime
    sha256: str
    threads: int
    parity: Parity | None = None
    rejected: tuple[str, ...] = ()
    check_seconds: float = 0.0
    previous: Model | None = None  # a cascade's first stage (card.previous_stage), run by the pipeline first

    @property
    def backend(self) -> str:
        return self.runtime.name

    @property
    def precision(self) -> str:
        return self.runtime.precision

    @classmethod
    def load(cls, path: str | Path, threads: int = 2, *, backend: str = "auto", precision: str = "fp32",
             measuring_evidence: bool = False) -> Model:
        """Open ``path`` (or ``builtin:NAME``), validate its card, I/O shapes and precision, pick the backend.

        ``measuring_evidence=True`` skips the card's precision rule, for the tool that measures the
        evidence (``python -m distillation.export.precision``); the node never sets it.
        """
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ModelError(f"threads must be a positive integer, got {threads}")
        if backend not in BACKENDS:
            raise ModelError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        file = resolve_model_path(path)
        digest, parts = file_digests(file)
        reference = open_onnxruntime(file, file.name, threads, "int8" if precision == "int8" else "fp32")
        meta = reference.metadata()
        if METADATA_KEY not in meta:
            raise ModelError(f"model file must carry a model card in metadata key {METADATA_KEY!r}, got "
                             f"{file.name} with keys {sorted(meta) or 'none'}; export it with "
                             "distillation.export.export_onnx")
        try:
            card = ModelCard.from_json(meta[METADATA_KEY])
        except ModelError as exc:
            raise ModelError(f"{file.name}: {exc}") from None
        verify_external_data(file, card.external_data, parts)
        _check_io(reference.session, card, file.name)
        if precision == "auto":
            wanted = auto_precisions(card)
            if wanted == ["int8"]:
                reference = open_onnxruntime(file, file.name, threads, "int8")
        else:
            wanted = [precision]
        try:
            if not measuring_evidence:
                for p in wanted:
                    card.check_precision(p)
            elif precision == "int8" and not card.quantized:
                raise ModelError(f"precision int8 needs an int8 model file (distill export --int8), got the float "
                                 f"model {card.name}")
        except ModelError as exc:
            raise ModelError(f"{file.name}: {exc}") from None
        t0 = time.perf_counter()
        passed_over: list[str] = []
        for i, p in enumerate(wanted):
            try:
                runtime, parity, rejected = _choose(file, card, reference, backend, p, threads)
                break
            except ModelError as exc:  # "auto": the next validated precision
                if i == len(wanted) - 1:
                    raise
                passed_over.append(f"precision {p} not used: {exc}")
        rejected = passed_over + rejected
        seconds = time.perf_counter() - t0
        previous = None
        if card.previous_stage is not None:  # the cascade's first stage, beside this file, as its card pins it
            first = file.parent / card.previous_stage.model
            if not first.is_file():
                raise ModelError(f"{file.name}: previous_stage.model must be a file beside it, got no "
                                 f"{card.previous_stage.model} in {file.parent}")
            previous_stage_path(file, first.name, card.previous_stage.sha256, file_sha256(first))
            previous = cls.load(first, threads, backend=backend, precision=precision)
        if rejected:
            log.warning("model %s: %s", card.name, "; ".join(rejected))
        log.info("loaded model %s %s (sha256 %s) on %s %s, %d threads%s", card.name, card.version, digest[:12],
                 runtime.name, runtime.precision, threads,
                 f"; self-check {parity.describe()} in {seconds:.1f} s" if parity else "")
        return cls(path=file, card=card, runtime=runtime, sha256=digest, threads=int(threads), parity=parity,
                   rejected=tuple(rejected), check_seconds=seconds, previous=previous)

    def predict(self, window: np.ndarray) -> np.ndarray:
        """Logits (1, K, z, y, x) for one float32 window (1, C, z, y, x)."""
        return self.runtime.predict(window)

    def __repr__(self) -> str:
        return (f"Model({self.card.name!r} {self.card.version}, {self.path.name}, {self.backend} {self.precision}, "
                f"sha256={self.sha256[:12]})")


def auto_precisions(card: ModelCard) -> list[str]:
    """What ``precision = "auto"`` tries, in order: an int8 file runs at int8; a float model at
    bf16 where its card records evidence for it (Dice against fp32 on held-out cases), then fp32.
    bf16 needs OpenVINO and a CPU with native bf16 that passes the self-check; else fp32 runs."""
    if card.quantized:
        return ["int8"]
    return [p for p in ("bf16", "fp32") if p == "fp32" or p in card.allowed_precisions]


def _choose(file: Path, card: ModelCard, reference: Any, backend: str, precision: str,
            threads: int) -> tuple[Runtime, Parity | None, list[str]]:
    """The runtime for (backend, precision): the reference itself, or a candidate that passes the check."""
    if backend == "onnxruntime":
        if precision == "bf16":
            raise ModelError(BF16_ON_ONNXRUNTIME)
        return reference, None, []
    names = [backend] if backend != "auto" else list(AUTO_ORDER)
    rejected: list[str] = []
    window = fixed_window(card.network_channels, card.patch_size)
    expected: np.ndarray | None = None
    for name in names:
        if name == "onnxruntime":
            if precision == "bf16":
                rejected.append("onnxruntime: no bf16 CPU convolution")
                continue
            return reference, None, rejected
        ov, why = openvino_status()
        if ov is None:
            if backend != "auto":
                raise ModelError(f"backend openvino must be installed, got {why}; valid: auto, onnxruntime")
            rejected.append(f"openvino: {why}")
            continue
        try:
            candidate = open_openvino(file, threads, precision, window.shape)
        except ModelError as exc:
            if backend != "auto":
                raise
            rejected.append(f"openvino: {exc}")
            continue
        if expected is None:
            expected = reference.predict(window)
        parity = compare(candidate.predict(window), expected, precision, card.activation)
        if parity.passed:
            return candidate, parity, rejected
        if backend != "auto":
            raise ModelError(f"backend openvino at {precision} must match ONNX Runtime on the self-check window, "
                             f"got {parity.describe()}; use backend onnxruntime")
        rejected.append(f"openvino {precision} failed the self-check: {parity.describe()}")
    valid = "fp32" if precision == "bf16" else "backend onnxruntime"
    raise ModelError(f"model {card.name} at precision {precision} needs a backend that supports it and passes the "
                     f"self-check, got none ({'; '.join(rejected)}); valid: {valid}")


def _check_io(session: Any, card: ModelCard, name: str) -> None:
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
        ("input", inputs[0], card.network_channels, "inputs"),
        ("output", out, card.num_outputs, "labels"),
    ):
        dims = _dims(arg.shape)
        if len(dims) != 5:
            raise ModelError(f"{name}: the model {what} {arg.name!r} must be 5-D [1, C, z, y, x], got shape {arg.shape}")
        if dims[1] is not None and dims[1] != expected:
            detail = (f"{card.network_channels} input channel(s) ({', '.join(card.channel_names)}"
                      + (f" + {card.network_channels - card.channels} previous-stage label(s)"
                         if card.previous_stage else "") + ")" if what == "input"
                      else f"{card.num_outputs} output channel(s) ({len(card.labels)} label(s)"
                      + (" + background" if card.activation == "softmax" else "") + f", {card.activation})")
            raise ModelError(f"{name}: the model {what} {arg.name!r} must have {detail} as the card's "
                             f"{field} say, got {dims[1]} in shape {arg.shape}")
        for axis, (d, p) in enumerate(zip(dims[2:], card.patch_size, strict=True)):
            if d is not None and d != p:
                raise ModelError(f"{name}: the model {what} spatial axis {axis} must be dynamic or the card's "
                                 f"patch size {p}, got {d} in shape {arg.shape}")
