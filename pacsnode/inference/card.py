"""The model card: the JSON carried in an .onnx file's metadata, as frozen typed records.

``ModelCard.from_json`` (or ``from_dict``) validates everything and raises
:class:`~pacsnode.errors.ModelError` naming the field (``labels[2].color``), the value
received and what is valid. Unknown keys are refused so a typo never passes silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pacsnode.errors import ModelError
from pacsnode.inference.external_data import ExternalData, parse_external_data
from pacsnode.inference.stages import PreviousStage, parse_target_spacing, resolve_spacing, slice_axis

__all__ = [
    "SCHEMA",
    "METADATA_KEY",
    "NORMALIZATION_SCHEMES",
    "ACTIVATIONS",
    "Code",
    "InputChannel",
    "Normalization",
    "Label",
    "Postprocessing",
    "ValidatedPrecision",
    "PRECISIONS",
    "ModelCard",
    "load_model_card",
]

SCHEMA = "pacsnode.model_card/1"
METADATA_KEY = "pacsnode.model_card"
NORMALIZATION_SCHEMES = ("zscore", "ct", "rescale01", "rgb01", "none")
ACTIVATIONS = ("softmax", "sigmoid")
PRECISIONS = ("fp32", "bf16", "int8")

_REQUIRED = ("schema", "name", "version", "inputs", "target_spacing", "patch_size", "normalization", "labels")
_OPTIONAL = ("description", "intended_use", "crop_to_nonzero", "tile_step", "mirror_axes", "aggregation",
             "activation", "postprocessing", "provenance", "validated_precisions", "external_data",
             "previous_stage")
AGGREGATIONS = ("float32", "float16")


def _err(path: str, rule: str, value: Any, valid: str) -> ModelError:
    shown = json.dumps(value) if not isinstance(value, str) else repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ModelError(f"model card field {path} {rule}, got {shown}; valid: {valid}")


def _keys(obj: Any, path: str, required: Sequence[str], optional: Sequence[str] = ()) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise _err(path, "must be an object", obj, "a JSON object with keys " + ", ".join((*required, *optional)))
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise _err(f"{path}.{unknown[0]}" if path else unknown[0], "is not a known key", unknown[0],
                   ", ".join((*required, *optional)))
    for k in required:
        if k not in obj:
            raise ModelError(f"model card field {path + '.' if path else ''}{k} is required but missing; "
                             f"valid keys: {', '.join((*required, *optional))}")
    return obj


def _str(v: Any, path: str, *, empty: bool = False) -> str:
    if not isinstance(v, str) or (not empty and not v.strip()):
        raise _err(path, "must be a non-empty string" if not empty else "must be a string", v, "a string")
    return v


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise _err(path, "must be a boolean", v, "true or false")
    return v


def _num(v: Any, path: str, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (positive and not v > 0):
        raise _err(path, "must be a positive number" if positive else "must be a number", v,
                   "a number greater than 0" if positive else "a number")
    return float(v)


def _triple(v: Any, path: str, *, integer: bool) -> tuple:
    what = "three positive integers (z, y, x)" if integer else "three positive numbers in mm (z, y, x)"
    if not isinstance(v, list) or len(v) != 3:
        raise _err(path, "must be a list of three values", v, what)
    out = []
    for x in v:
        ok = (isinstance(x, int) if integer else isinstance(x, (int, float))) and not isinstance(x, bool) and x > 0
        if not ok:
            raise _err(path, "must hold positive " + ("integers" if integer else "numbers"), v, what)
        out.append(int(x) if integer else float(x))
    return tuple(out)


@dataclass(frozen=True)
class Code:
    """A coded concept (scheme, value, meaning), e.g. SCT 79654002 "Edema"."""

    scheme: str
    value: str
    meaning: str

    @classmethod
    def from_dict(cls, d: Any, path: str) -> Code:
        d = _keys(d, path, ("scheme", "value", "meaning"))
        return cls(_str(d["scheme"], f"{path}.scheme"), _str(d["value"], f"{path}.value"),
                   _str(d["meaning"], f"{path}.meaning"))

    def to_dict(self) -> dict[str, str]:
        return {"scheme": self.scheme, "value": self.value, "meaning": self.meaning}


@dataclass(frozen=True)
class InputChannel:
    """One input channel and the selector that finds its series in a study."""

    name: str
    modality: str
    series_description: str  # a regular expression searched in SeriesDescription

    @classmethod
    def from_dict(cls, d: Any, path: str) -> InputChannel:
        d = _keys(d, path, ("name", "modality", "series_description"))
        rx = _str(d["series_description"], f"{path}.series_description")
        try:
            re.compile(rx)
        except re.error as exc:
            raise _err(f"{path}.series_description", f"must be a valid regular expression ({exc})", rx,
                       "a Python regular expression such as '(?i)^flair'") from None
        modality = _str(d["modality"], f"{path}.modality")
        if not re.fullmatch(r"[A-Z]{2,16}", modality):
            raise _err(f"{path}.modality", "must be a DICOM Modality code", modality, "e.g. MR, CT, PT")
        return cls(_str(d["name"], f"{path}.name"), modality, rx)

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "modality": self.modality, "series_description": self.series_description}


@dataclass(frozen=True)
class Normalization:
    """Per-channel intensity normalization, as nnU-Net's ZScore / CT schemes."""

    scheme: str
    use_nonzero_mask: bool = False
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None

    @classmethod
    def from_dict(cls, d: Any, path: str) -> Normalization:
        if not isinstance(d, Mapping) or d.get("scheme") not in NORMALIZATION_SCHEMES:
            value = d.get("scheme") if isinstance(d, Mapping) else d
            raise _err(f"{path}.scheme", "must name a normalization scheme", value,
                       ", ".join(NORMALIZATION_SCHEMES))
        scheme = d["scheme"]
        if scheme == "zscore":
            d = _keys(d, path, ("scheme",), ("use_nonzero_mask",))
            return cls("zscore", use_nonzero_mask=_bool(d.get("use_nonzero_mask", False), f"{path}.use_nonzero_mask"))
        if scheme == "ct":
            d = _keys(d, path, ("scheme", "clip", "mean", "std"))
            clip = d["clip"]
            if (not isinstance(clip, list) or len(clip) != 2
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in clip)
                    or not clip[0] < clip[1]):
                raise _err(f"{path}.clip", "must be [lo, hi] with lo < hi", clip, "two numbers, e.g. [-958, 327]")
            return cls("ct", clip=(float(clip[0]), float(clip[1])), mean=_num(d["mean"], f"{path}.mean"),
                       std=_num(d["std"], f"{path}.std", positive=True))
        _keys(d, path, ("scheme",))
        return cls(scheme)

    def to_dict(self) -> dict[str, Any]:
        if self.scheme == "zscore":
            return {"scheme": "zscore", "use_nonzero_mask": self.use_nonzero_mask}
        if self.scheme == "ct":
            return {"scheme": "ct", "clip": list(self.clip or ()), "mean": self.mean, "std": self.std}
        return {"scheme": self.scheme}


@dataclass(frozen=True)
class Label:
    """One output label (softmax) or region (sigmoid).

    A region of a region-based (sigmoid) model is painted with ``value`` where its output is
    above 0.5, regions later in the card overwriting earlier ones (nnU-Net's
    ``regions_class_order``); ``region`` lists the painted values whose union *is* the region
    (BraTS's whole tumour: [1, 2, 3]), so its segment is that union, not the voxels painted ``value``.
    """

    value: int
    name: str
    category: Code
    type: Code
    color: tuple[int, int, int]
    region: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, d: Any, path: str) -> Label:
        d = _keys(d, path, ("value", "name", "category", "type"), ("color", "region"))
        v = d["value"]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 255:
            raise _err(f"{path}.value", "must be an integer label value", v, "1 to 255 (0 is background)")
        color = d.get("color", [128, 128, 128])
        if (not isinstance(color, list) or len(color) != 3
                or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)):
            raise _err(f"{path}.color", "must be an RGB triple", color, "three integers 0-255")
        region = d.get("region", [])
        if (not isinstance(region, list) or len(set(region)) != len(region)
                or not all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= 255 for r in region)):
            raise _err(f"{path}.region", "must be a list of distinct label values", region,
                       "integers 1-255, e.g. [1, 2, 3] for a whole tumour")
        return cls(v, _str(d["name"], f"{path}.name"), Code.from_dict(d["category"], f"{path}.category"),
                   Code.from_dict(d["type"], f"{path}.type"), tuple(color), tuple(region))  # type: ignore[arg-type]

    @property
    def members(self) -> tuple[int, ...]:
        """The painted values that belong to this label's segment: its region, or its own value."""
        return self.region or (self.value,)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "name": self.name, "category": self.category.to_dict(),
                "type": self.type.to_dict(), "color": list(self.color),
                **({"region": list(self.region)} if self.region else {})}


@dataclass(frozen=True)
class Postprocessing:
    """Largest-connected-component steps, applied in order (nnU-Net's find_best_configuration).

    Each step is a label value, or a list of values whose union is reduced to its largest
    component (the whole foreground, or a region); removed voxels become background.
    """

    largest_component: tuple[int | tuple[int, ...], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"largest_component": [list(s) if isinstance(s, tuple) else s for s in self.largest_component]}


_EVIDENCE_NUMBERS = ("dice_change", "worst_dice_change", "voxel_agreement")


@dataclass(frozen=True)
class ValidatedPrecision:
    """Evidence that the model may run at ``precision``: measured against fp32 on held-out cases.

    ``dice_change`` is the mean over labels of (Dice at this precision - Dice at fp32),
    ``worst_dice_change`` the lowest per-label change, ``voxel_agreement`` the fraction of
    voxels whose label equals fp32's, over ``cases`` cases of ``dataset`` run on ``backend``.
    """

    precision: str
    backend: str
    cases: int
    dataset: str
    dice_change: float
    worst_dice_change: float
    voxel_agreement: float

    @classmethod
    def from_dict(cls, d: Any, path: str) -> ValidatedPrecision:
        d = _keys(d, path, ("precision", "backend", "cases", "dataset", *_EVIDENCE_NUMBERS))
        if d["precision"] not in PRECISIONS:
            raise _err(f"{path}.precision", "must name a precision", d["precision"], ", ".join(PRECISIONS))
        cases = d["cases"]
        if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
            raise _err(f"{path}.cases", "must be a positive integer", cases, "the number of held-out cases")
        numbers = {k: _num(d[k], f"{path}.{k}") for k in _EVIDENCE_NUMBERS}
        if not 0 <= numbers["voxel_agreement"] <= 1:
            raise _err(f"{path}.voxel_agreement", "must be a fraction", d["voxel_agreement"], "a number in [0, 1]")
        return cls(precision=d["precision"], backend=_str(d["backend"], f"{path}.backend"), cases=cases,
                   dataset=_str(d["dataset"], f"{path}.dataset"), **numbers)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "backend": self.backend, "cases": self.cases,
                "dataset": self.dataset, "dice_change": self.dice_change,
                "worst_dice_change": self.worst_dice_change, "voxel_agreement": self.voxel_agreement}


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to run one model; the single source of truth for its plans."""

    name: str
    version: str
    inputs: tuple[InputChannel, ...]
    target_spacing: tuple[float | None, float | None, float | None]  # null: a 2-D model's slice axis
    patch_size: tuple[int, int, int]
    normalization: tuple[Normalization, ...]
    labels: tuple[Label, ...]
    description: str = ""
    intended_use: str = ""
    crop_to_nonzero: bool = True
    tile_step: float = 0.5
    mirror_axes: tuple[int, ...] = ()
    aggregation: str = "float32"
    activation: str = "softmax"
    postprocessing: Postprocessing = Postprocessing()
    provenance: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    validated_precisions: tuple[ValidatedPrecision, ...] = ()
    external_data: tuple[ExternalData, ...] = ()  # weights beside the file (pacsnode.inference.external_data)
    previous_stage: PreviousStage | None = None   # a cascade's first stage (pacsnode.inference.stages)
    schema: str = SCHEMA

    # ---- derived -----------------------------------------------------------------
    @property
    def channels(self) -> int:
        return len(self.inputs)

    @property
    def network_channels(self) -> int:
        """The network's input channels: the inputs, then a cascade's one-hot previous-stage labels."""
        return len(self.inputs) + (len(self.previous_stage.labels) if self.previous_stage else 0)

    @property
    def slice_axis(self) -> int | None:
        """The axis a 2-D model runs slice by slice along (target spacing null there), else None."""
        return slice_axis(self.target_spacing)

    def spacing_for(self, source: Sequence[float]) -> tuple[float, float, float]:
        """The target spacing for a volume at ``source`` spacing (a 2-D model keeps the source's between slices)."""
        return resolve_spacing(self.target_spacing, source)

    @property
    def num_outputs(self) -> int:
        """K, the number of output channels: labels + background (softmax) or regions (sigmoid)."""
        return len(self.labels) + (1 if self.activation == "softmax" else 0)

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.inputs)

    @property
    def quantized(self) -> bool:
        """Whether the file is an int8 (QDQ) export (``provenance.quantization``, set by ``distill export --int8``)."""
        return "quantization" in self.provenance

    @property
    def test_metrics(self) -> Mapping[str, Any]:
        """The held-out test figures the card carries (``provenance.test``: Dice and HD95 per structure on
        cases never used for training or for choosing the model), ``{}`` if none. Cards written before
        the key existed kept them under ``provenance.validation`` with a ``split`` that says held-out
        (the shipped brain-tumor 0.1.0 does); those are read as test figures, which is what they are."""
        test = self.provenance.get("test")
        if test is None:
            legacy = self.provenance.get("validation")
            if isinstance(legacy, Mapping) and "held-out" in str(legacy.get("split", "")):
                test = legacy
        return test if isinstance(test, Mapping) else {}

    @property
    def allowed_precisions(self) -> tuple[str, ...]:
        """Precisions the node may run: fp32 for a float file, plus each one the card has evidence for."""
        validated = [v.precision for v in self.validated_precisions]
        base = [] if self.quantized else ["fp32"]
        return tuple(p for p in PRECISIONS if p in base or p in validated)

    def check_precision(self, precision: str) -> None:
        """Refuse a precision the card does not allow (one line: the rule, the value, what is valid)."""
        if precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if self.quantized and precision != "int8":
            raise ModelError(f"model {self.name} is an int8 (quantized) file, so it must run at precision int8, "
                             f"got {precision}")
        if not self.quantized and precision == "int8":
            raise ModelError(f"precision int8 needs an int8 model file (distill export --int8), got the float "
                             f"model {self.name}; valid: {', '.join(self.allowed_precisions)}")
        if precision not in self.allowed_precisions:
            raise ModelError(f"precision {precision} must be validated in model {self.name}'s card "
                             f"(validated_precisions: Dice against fp32 on held-out cases), got none for it; "
                             f"valid: {', '.join(self.allowed_precisions) or 'none'}")

    def label(self, value: int) -> Label:
        for lab in self.labels:
            if lab.value == value:
                return lab
        raise ModelError(f"label value must be one of the card's labels, got {value}; "
                         f"valid: {', '.join(str(lab.value) for lab in self.labels)}")

    # ---- (de)serialisation ---------------------------------------------------------
    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"model card must be valid JSON, got a parse error: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, d: Any) -> ModelCard:
        d = _keys(d, "", _REQUIRED, _OPTIONAL)
        if d["schema"] != SCHEMA:
            raise _err("schema", "must name the card schema", d["schema"], repr(SCHEMA))
        if not isinstance(d["inputs"], list) or not d["inputs"]:
            raise _err("inputs", "must be a non-empty list of channels", d["inputs"],
                       '[{"name": ..., "modality": ..., "series_description": ...}, ...]')
        inputs = tuple(InputChannel.from_dict(x, f"inputs[{i}]") for i, x in enumerate(d["inputs"]))
        names = [c.name for c in inputs]
        if len(set(names)) != len(names):
            raise _err("inputs", "must have unique channel names", names, "distinct names")
        norm = d["normalization"]
        if not isinstance(norm, list) or len(norm) != len(inputs):
            raise _err("normalization", f"must be a list with one entry per input ({len(inputs)})", norm,
                       f"{len(inputs)} entries with scheme in {', '.join(NORMALIZATION_SCHEMES)}")
        normalization = tuple(Normalization.from_dict(x, f"normalization[{i}]") for i, x in enumerate(norm))
        if not isinstance(d["labels"], list) or not d["labels"]:
            raise _err("labels", "must be a non-empty list", d["labels"],
                       '[{"value": 1, "name": ..., "category": ..., "type": ...}, ...]')
        labels = tuple(Label.from_dict(x, f"labels[{i}]") for i, x in enumerate(d["labels"]))
        values = [lab.value for lab in labels]
        if len(set(values)) != len(values):
            raise _err("labels", "must have unique values", values, "distinct integers 1-255")
        activation = d.get("activation", "softmax")
        if activation not in ACTIVATIONS:
            raise _err("activation", "must name an output activation", activation, ", ".join(ACTIVATIONS))
        if activation == "softmax" and sorted(values) != list(range(1, len(values) + 1)):
            raise _err("labels", "must have values 1..N in some order for a softmax model", values,
                       f"{list(range(1, len(values) + 1))}")
        tile_step = _num(d.get("tile_step", 0.5), "tile_step", positive=True)
        if tile_step > 1:
            raise _err("tile_step", "must be a fraction of the patch", tile_step, "a number in (0, 1]")
        mirror = d.get("mirror_axes", [])
        if (not isinstance(mirror, list) or len(set(mirror)) != len(mirror)
                or not all(isinstance(a, int) and not isinstance(a, bool) and a in (0, 1, 2) for a in mirror)):
            raise _err("mirror_axes", "must be a list of distinct spatial axes", mirror, "a subset of [0, 1, 2]")
        aggregation = d.get("aggregation", "float32")
        if aggregation not in AGGREGATIONS:
            raise _err("aggregation", "must name the sliding window's sum type", aggregation, ", ".join(AGGREGATIONS))
        post = _keys(d.get("postprocessing", {}), "postprocessing", (), ("largest_component",))
        lcc = post.get("largest_component", [])

        def _step(s: Any) -> bool:
            if isinstance(s, list):
                return bool(s) and all(v in values and not isinstance(v, bool) for v in s)
            return s in values and not isinstance(s, bool)

        if not isinstance(lcc, list) or not all(_step(s) for s in lcc):
            raise _err("postprocessing.largest_component", "must list label values of the card (or lists of "
                       "them, each kept as one union)", lcc, f"values or lists of values from {values}")
        for i, lab in enumerate(labels):
            if lab.region and activation != "sigmoid":
                raise _err(f"labels[{i}].region", "is only for a region-based (sigmoid) model", list(lab.region),
                           "no region for a softmax model")
            if not set(lab.region) <= set(values):
                raise _err(f"labels[{i}].region", "must list label values of the card", list(lab.region),
                           f"a subset of {values}")
        provenance = d.get("provenance", {})
        if not isinstance(provenance, Mapping):
            raise _err("provenance", "must be an object", provenance, "a JSON object")
        validated = d.get("validated_precisions", [])
        if not isinstance(validated, list):
            raise _err("validated_precisions", "must be a list", validated,
                       '[{"precision": "bf16", "backend": ..., "cases": ..., ...}]')
        precisions = tuple(ValidatedPrecision.from_dict(x, f"validated_precisions[{i}]")
                           for i, x in enumerate(validated))
        seen = [v.precision for v in precisions]
        if len(set(seen)) != len(seen):
            raise _err("validated_precisions", "must name each precision once", seen, ", ".join(PRECISIONS))
        return cls(
            name=_str(d["name"], "name"),
            version=_str(d["version"], "version"),
            description=_str(d.get("description", ""), "description", empty=True),
            intended_use=_str(d.get("intended_use", ""), "intended_use", empty=True),
            inputs=inputs,
            target_spacing=parse_target_spacing(d["target_spacing"], _triple(d["patch_size"], "patch_size",
                                                                              integer=True)),  # type: ignore[arg-type]
            patch_size=_triple(d["patch_size"], "patch_size", integer=True),  # type: ignore[arg-type]
            normalization=normalization,
            crop_to_nonzero=_bool(d.get("crop_to_nonzero", True), "crop_to_nonzero"),
            tile_step=tile_step,
            mirror_axes=tuple(mirror),
            aggregation=aggregation,
            activation=activation,
            labels=labels,
            postprocessing=Postprocessing(tuple(tuple(s) if isinstance(s, list) else s for s in lcc)),
            provenance=MappingProxyType(json.loads(json.dumps(provenance))),
            validated_precisions=precisions,
            external_data=parse_external_data(d.get("external_data", [])),
            previous_stage=PreviousStage.from_dict(d["previous_stage"]) if "previous_stage" in d else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "intended_use": self.intended_use,
            "inputs": [c.to_dict() for c in self.inputs],
            "target_spacing": list(self.target_spacing),
            "patch_size": list(self.patch_size),
            "normalization": [n.to_dict() for n in self.normalization],
            "crop_to_nonzero": self.crop_to_nonzero,
            "tile_step": self.tile_step,
            "mirror_axes": list(self.mirror_axes),
            **({"aggregation": self.aggregation} if self.aggregation != "float32" else {}),
            "activation": self.activation,
            "labels": [lab.to_dict() for lab in self.labels],
            "postprocessing": self.postprocessing.to_dict(),
            "provenance": json.loads(json.dumps(dict(self.provenance))),
            **({"validated_precisions": [v.to_dict() for v in self.validated_precisions]}
               if self.validated_precisions else {}),
            **({"external_data": [e.to_dict() for e in self.external_data]} if self.external_data else {}),
            **({"previous_stage": self.previous_stage.to_dict()} if self.previous_stage else {}),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def load_model_card(source: str | bytes | Mapping[str, Any]) -> ModelCard:
    """A validated card from JSON text or an already parsed mapping."""
    if isinstance(source, Mapping):
        return ModelCard.from_dict(source)
    return ModelCard.from_json(source)
