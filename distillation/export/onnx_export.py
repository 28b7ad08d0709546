"""Export a (student) network to one deployable ONNX file with its model card.

``export_onnx`` traces with ``torch.onnx.export(..., dynamo=False)`` (no onnxscript needed), deep
supervision off, input ``input`` [1, C, z, y, x] and output ``logits`` [1, K, z, y, x] with dynamic
spatial axes, writes the card JSON into ``metadata_props["pacsnode.model_card"]`` after validating
it with the node's validator, and checks with ONNX Runtime that ONNX and torch agree on a window
(max abs difference of logits and argmax agreement are returned in an :class:`ExportReport`).
KD adapters are never part of the file: only the network passed in (or its ``.student``) is exported.

Weights past :data:`EXTERNAL_DATA_BYTES` (1 GiB of float32 tensors, e.g. a five-fold full-size nnU-Net
ensemble; protobuf refuses a message past 2 GiB) go to ONNX external data beside the graph:
``NAME.onnx`` (graph and card) plus ``NAME.onnx.data`` (every tensor, one file). The card's
``external_data`` records that file's size and sha256 and the node refuses a mismatch
(:mod:`pacsnode.inference.external_data`). Copy both files together.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distillation.export.card import validate_card

__all__ = ["METADATA_KEY", "EXTERNAL_DATA_BYTES", "ExportReport", "export_onnx", "compare_onnx_torch", "read_card",
           "write_card", "total_stride"]

log = logging.getLogger(__name__)

METADATA_KEY = "pacsnode.model_card"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXTERNAL_DATA_BYTES = 1 << 30
"""Weights (bytes of tensors) above which the exporter writes ONNX external data: half protobuf's 2 GiB
limit, so the graph, the card and a quantized copy's extra tensors never bring a file near it."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    opset: int
    parameters: int
    check_shape: tuple[int, ...]
    max_abs_diff: float
    argmax_agreement: float
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "opset": self.opset, "parameters": self.parameters,
                "check_shape": list(self.check_shape), "max_abs_diff": self.max_abs_diff,
                "argmax_agreement": self.argmax_agreement, "sha256": self.sha256}


class _LogitsOnly(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def _strip(net: nn.Module) -> nn.Module:
    """The bare segmentation network: unwrap DDP / torch.compile / a KD pair's ``student``."""
    for attr in ("module", "_orig_mod", "student"):
        inner = getattr(net, attr, None)
        if isinstance(inner, nn.Module):
            return _strip(inner)
    return net


def total_stride(net: nn.Module) -> tuple[int, ...]:
    """Product of the encoder strides per axis (input sizes must be multiples of it); looks through a
    fold ensemble (``folds``) and an axis-transposing wrapper (``net`` with ``transpose_forward``)."""
    folds = getattr(net, "folds", None)
    if isinstance(folds, nn.ModuleList) and len(folds):
        per_fold = [total_stride(f) for f in folds]
        return tuple(max(s[a] for s in per_fold) for a in range(len(per_fold[0])))
    inner = getattr(net, "net", None)
    if isinstance(inner, nn.Module):
        stride = total_stride(inner)
        order = getattr(net, "transpose_forward", None)
        if order is None:
            return stride
        out = [1] * len(stride)
        for i, axis in enumerate(order):  # network axis i is the input's axis transpose_forward[i]
            out[int(axis)] = stride[i]
        return tuple(out)
    strides = getattr(getattr(net, "encoder", None), "strides", None)
    if not strides:
        return (1, 1, 1)
    return tuple(int(math.prod(s[a] for s in strides)) for a in range(len(strides[0])))


def _input_channels(net: nn.Module) -> int:
    first = next(m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)))
    return int(first.in_channels)


def _prepare(net: nn.Module) -> nn.Module:
    net = copy.deepcopy(_strip(net)).float().cpu().eval()
    decoder = getattr(net, "decoder", None)
    if decoder is not None and hasattr(decoder, "deep_supervision"):
        decoder.deep_supervision = False
    return net


def write_card(path: str | os.PathLike, card: Mapping[str, Any]) -> None:
    """(Re)write the card into an existing ONNX file's metadata_props, atomically."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)  # the data file is neither read nor rewritten
    _set_card(model, card)
    _save_atomic(model, path)


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """The card JSON of an ONNX file (read through ONNX Runtime, as the node does)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ValueError(f"ONNX file must carry metadata key {METADATA_KEY!r}, got keys {sorted(meta)} in {path}")
    return json.loads(meta[METADATA_KEY])


def _set_card(model: Any, card: Mapping[str, Any]) -> None:
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(card, sort_keys=False)


def _file_mode() -> int:
    """The mode an ordinary new file gets under this process's umask (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _save_atomic(model: Any, path: Path) -> None:
    """Write atomically (temp file in the same folder, then ``os.replace``) with an ordinary file's
    mode, not mkstemp's 0600: a model file is read by the node's service user."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compare_onnx_torch(net: nn.Module, onnx_path: str | os.PathLike, x: np.ndarray,
                       threads: int = 2) -> tuple[float, float]:
    """(max |logits_onnx - logits_torch|, fraction of voxels whose argmax agrees) on input ``x``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0]
    with torch.no_grad():
        ref = _LogitsOnly(_prepare(net))(torch.from_numpy(x.astype(np.float32))).numpy()
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    return diff, agree


def _default_check_shape(card_patch: Sequence[int], divisor: Sequence[int], cap: int) -> tuple[int, ...]:
    shape = []
    for p, d in zip(card_patch, divisor, strict=True):
        size = min(int(p), max(cap, d))
        shape.append(max(d, (size // d) * d))
    return tuple(shape)


def _weight_bytes(model: nn.Module) -> int:
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))


def _trace(model: nn.Module, dummy: torch.Tensor, path: Path, opset: int, spatial: dict[int, str]) -> None:
    """torch.onnx.export to a path (a model past 2 GiB is written as external data only to a path)."""
    with torch.no_grad(), warnings.catch_warnings():
        # InstanceNorm always normalises with the input's own statistics; the exporter warns about it.
        warnings.filterwarnings("ignore", message=".*instance_norm.*", category=UserWarning)
        # InstanceNorm's Python-side channel-count check; shapes of channels are static in our graphs.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            _LogitsOnly(model), (dummy,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: dict(spatial), OUTPUT_NAME: dict(spatial)},
            do_constant_folding=True,
        )


def _save_with_external_data(onnx_model: Any, card: dict[str, Any], path: Path) -> dict[str, Any]:
    """Write ``NAME.onnx.data`` (all tensors) and then ``NAME.onnx`` (graph + card recording the data's
    size and sha256), each atomically; returns the card as written."""
    import onnx

    from pacsnode.inference.external_data import file_digests

    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        onnx.save_model(onnx_model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=0)
        digests = file_digests(staged)[1]
        size = (Path(tmp) / data_name).stat().st_size
        card = validate_card({**card, "external_data": [{"file": data_name, "sha256": digests[data_name],
                                                         "bytes": size}]})
        _set_card(onnx_model, card)  # the tensors are external now: this writes only the graph
        onnx.save_model(onnx_model, str(staged))
        for name in (data_name, path.name):  # data first: a graph never points at missing weights
            os.chmod(Path(tmp) / name, _file_mode())
            os.replace(Path(tmp) / name, path.parent / name)
    return card


def export_onnx(net: nn.Module, card: Mapping[str, Any], path: str | os.PathLike, opset: int = 17, *,
                check: bool = True, check_shape: Sequence[int] | None = None, check_cap: int = 64,
                atol: float = 1e-3, min_argmax_agreement: float = 0.999, seed: int = 0,
                external_data_bytes: int = EXTERNAL_DATA_BYTES) -> ExportReport:
    """Write ``net`` (deep supervision off, KD adapters stripped) and ``card`` to ``path``.

    The card is validated with the node's validator first (``ModelError`` on a bad card); its
    ``inputs`` and ``labels`` must match the network's input and output channels. With ``check``
    the file is run through ONNX Runtime on a random window (``check_shape``, by default the card's
    patch size capped at ``check_cap`` voxels per axis) and compared with torch; a max abs difference
    above ``atol`` or argmax agreement below ``min_argmax_agreement`` raises ``ValueError``.
    Weights larger than ``external_data_bytes`` go to ``NAME.onnx.data`` (see the module docstring);
    the report's sha256 is the node's (the graph file, then the data file).
    """
    import onnx

    from pacsnode.errors import ModelError
    from pacsnode.inference.external_data import file_digests

    card = validate_card({k: v for k, v in card.items() if k != "external_data"})
    path = Path(path)
    model = _prepare(net)
    channels = _input_channels(model)
    n_out = len(card["labels"]) + (1 if card["activation"] == "softmax" else 0)
    extra = len((card.get("previous_stage") or {}).get("labels", ()))  # a cascade's one-hot previous stage
    if channels != len(card["inputs"]) + extra:
        raise ModelError(f"the card's inputs must match the network's input channels ({channels}), got "
                         f"{len(card['inputs'])}: {[c['name'] for c in card['inputs']]}"
                         + (f" + {extra} previous-stage labels" if extra else ""))
    num_classes = getattr(getattr(model, "decoder", None), "num_classes", n_out)
    if num_classes != n_out:
        raise ModelError(f"the card's labels must give the network's {num_classes} output channels "
                         f"({card['activation']}), got {len(card['labels'])} labels")
    divisor = total_stride(model)
    trace_shape = tuple(2 * d for d in divisor)
    dummy = torch.zeros((1, channels, *trace_shape))
    dummy.normal_(generator=torch.Generator().manual_seed(seed))
    spatial = {2: "z", 3: "y", 4: "x"} if len(divisor) == 3 else {2: "y", 3: "x"}
    external = _weight_bytes(model) > external_data_bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.trace.", dir=path.parent) as tmp:
        traced = Path(tmp) / "traced.onnx"
        _trace(model, dummy, traced, opset, spatial)
        onnx_model = onnx.load(str(traced))  # torch's own external data (past 2 GiB) is read back in
    onnx_model.producer_name = "pacsnode.distillation"
    onnx_model.doc_string = f"{card['name']} {card['version']}: {card.get('description', '')}"[:500]
    stale = path.with_name(path.name + ".data")
    if external:
        card = _save_with_external_data(onnx_model, dict(card), path)
        del onnx_model
        onnx.checker.check_model(str(path))  # by path: the checker reads a model past 2 GiB only so
    else:
        _set_card(onnx_model, card)
        onnx.checker.check_model(onnx_model)
        _save_atomic(onnx_model, path)
        stale.unlink(missing_ok=True)  # an older export's weights must not count in the node's sha256
    log.info("exported %s%s", path.name, f" + {stale.name} (external data)" if external else "")
    params = sum(p.numel() for p in model.parameters())
    diff, agree = float("nan"), float("nan")
    shape: tuple[int, ...] = ()
    if check:
        shape = tuple(check_shape) if check_shape else _default_check_shape(card["patch_size"], divisor, check_cap)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((1, channels, *shape), dtype=np.float32)
        diff, agree = compare_onnx_torch(model, path, x)
        log.info("exported %s: max |onnx - torch| = %.3g, argmax agreement %.6f on %s", path.name, diff, agree,
                 shape)
        if not (diff <= atol and agree >= min_argmax_agreement):
            raise ValueError(f"ONNX and torch must agree (max abs diff <= {atol}, argmax agreement >= "
                             f"{min_argmax_agreement}), got {diff:.3g} and {agree:.6f} for {path}")
    digest = file_digests(path)[0]
    return ExportReport(path=path, opset=opset, parameters=int(params), check_shape=shape, max_abs_diff=diff,
                        argmax_agreement=agree, sha256=digest)
