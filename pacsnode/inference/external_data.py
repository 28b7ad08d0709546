"""Weights kept beside a model file as ONNX external data, and the check that they are the exported ones.

A model whose weights pass the exporter's threshold (``distillation.export.onnx_export.EXTERNAL_DATA_BYTES``,
1 GiB; protobuf refuses one message past 2 GiB, so a five-fold full-size nnU-Net cannot be one file)
is two files: ``NAME.onnx`` (graph and model card) and ``NAME.onnx.data`` (the tensors). The card's
``external_data`` lists each data file with its size and sha256; :func:`verify_external_data` refuses
a model whose data file is missing, renamed, truncated or replaced, naming the file. ONNX Runtime
and OpenVINO both read the data from the graph's path (never from bytes in memory).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacsnode.errors import ModelError

__all__ = ["ExternalData", "parse_external_data", "external_data_files", "file_digests", "verify_external_data"]

_SHA = re.compile(r"^[0-9a-f]{64}$")
_BLOCK = 1 << 20


def _bad(path: str, rule: str, value: Any, valid: str) -> ModelError:
    shown = repr(value) if isinstance(value, str) else str(value)
    return ModelError(f"model card field {path} {rule}, got {shown[:80]}; valid: {valid}")


@dataclass(frozen=True)
class ExternalData:
    """One data file beside the model file: its bare name, size in bytes and sha256 (hex)."""

    file: str
    sha256: str
    bytes: int

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> ExternalData:
        keys = ("file", "sha256", "bytes")
        if not isinstance(obj, Mapping) or set(obj) != set(keys):
            raise _bad(path, "must be an object with exactly the keys file, sha256, bytes", obj,
                       '{"file": "NAME.onnx.data", "sha256": "<64 hex>", "bytes": N}')
        name = obj["file"]
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise _bad(f"{path}.file", "must be a bare file name beside the model file", name,
                       "a name without a folder, e.g. 'model.onnx.data'")
        if not isinstance(obj["sha256"], str) or not _SHA.match(obj["sha256"]):
            raise _bad(f"{path}.sha256", "must be a sha256 in lower-case hex", obj["sha256"], "64 hex digits")
        size = obj["bytes"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _bad(f"{path}.bytes", "must be a non-negative integer", size, "the file's size in bytes")
        return cls(file=name, sha256=obj["sha256"], bytes=size)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "bytes": self.bytes}


def parse_external_data(value: Any, path: str = "external_data") -> tuple[ExternalData, ...]:
    """The card's ``external_data`` list, validated (distinct file names)."""
    if not isinstance(value, list):
        raise _bad(path, "must be a list", value, '[{"file": ..., "sha256": ..., "bytes": ...}]')
    entries = tuple(ExternalData.from_dict(x, f"{path}[{i}]") for i, x in enumerate(value))
    names = [e.file for e in entries]
    if len(set(names)) != len(names):
        raise _bad(path, "must name each file once", names, "distinct file names")
    return entries


def external_data_files(file: Path) -> list[Path]:
    """The external-data files beside an ONNX file, by the exporter's convention ``NAME.onnx.data``."""
    data = file.with_name(file.name + ".data")
    return [data] if data.is_file() else []


def file_digests(file: Path) -> tuple[str, dict[str, str]]:
    """(sha256 of the model file then its ``NAME.onnx.data``, {file name: sha256 of that file alone}),
    in one read of 1 MiB blocks (a 2.5 GB data file is read once, never held whole)."""
    whole = hashlib.sha256()
    parts: dict[str, str] = {}
    for part in (file, *external_data_files(file)):
        own = hashlib.sha256()
        with part.open("rb") as f:
            for block in iter(lambda: f.read(_BLOCK), b""):
                whole.update(block)
                own.update(block)
        parts[part.name] = own.hexdigest()
    return whole.hexdigest(), parts


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def verify_external_data(file: Path, entries: Sequence[ExternalData], known: Mapping[str, str] | None = None) -> None:
    """Refuse unless every data file the card lists lies beside ``file`` with the recorded size and sha256.

    ``known`` holds digests already computed (:func:`file_digests`), so no file is read twice.
    """
    for entry in entries:
        data = file.with_name(entry.file)
        if not data.is_file():
            raise ModelError(f"{file.name}: external data file {entry.file} must lie beside the model file "
                             f"(its card lists it), got no such file in {file.parent}")
        size = data.stat().st_size
        if size != entry.bytes:
            raise ModelError(f"{file.name}: external data file {entry.file} must have the {entry.bytes} bytes its "
                             f"card records, got {size}; copy the model's .onnx and .onnx.data files together")
        digest = (known or {}).get(entry.file) or _sha256(data)
        if digest != entry.sha256:
            raise ModelError(f"{file.name}: external data file {entry.file} must have the sha256 its card records "
                             f"({entry.sha256[:12]}...), got {digest[:12]}...; it is not the exported weights")
