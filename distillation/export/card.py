"""Model cards for exported models: SNOMED CT label codes (TEAM.md), channel selectors, validation.

:func:`make_card` assembles a card dict from dataset-level facts (channels, labels, spacing, patch,
normalization); :func:`validate_card` runs it through the node's own validator
(:class:`pacsnode.inference.card.ModelCard`) so an exported file is never refused at load time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "LABEL_CODES",
    "CHANNEL_SELECTORS",
    "INTENDED_USE",
    "label_entry",
    "channel_entry",
    "make_card",
    "validate_card",
]

INTENDED_USE = "Research and demonstration only. Not for clinical use."

_MORPH = {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"}
_ANAT = {"scheme": "SCT", "value": "123037004", "meaning": "Anatomical Structure"}
_TISSUE = {"scheme": "SCT", "value": "85756007", "meaning": "Tissue"}

# Lower-cased label name → (category, type, colour). Names follow TEAM.md and common nnU-Net datasets.
LABEL_CODES: dict[str, tuple[dict[str, str], dict[str, str], list[int]]] = {
    "edema": (_MORPH, {"scheme": "SCT", "value": "79654002", "meaning": "Edema"}, [255, 255, 0]),
    "necrotic core": (_MORPH, {"scheme": "SCT", "value": "6574001", "meaning": "Necrosis"}, [255, 0, 0]),
    "necrosis": (_MORPH, {"scheme": "SCT", "value": "6574001", "meaning": "Necrosis"}, [255, 0, 0]),
    "non-enhancing tumor": (_MORPH, {"scheme": "SCT", "value": "6574001", "meaning": "Necrosis"}, [255, 0, 0]),
    "enhancing tumor": (_MORPH, {"scheme": "SCT", "value": "108369006", "meaning": "Neoplasm"}, [0, 128, 255]),
    "liver": (_ANAT, {"scheme": "SCT", "value": "10200004", "meaning": "Liver"}, [221, 130, 101]),
    "spleen": (_ANAT, {"scheme": "SCT", "value": "78961009", "meaning": "Spleen"}, [157, 108, 162]),
    "right kidney": (_ANAT, {"scheme": "SCT", "value": "9846003", "meaning": "Right kidney"}, [185, 102, 83]),
    "left kidney": (_ANAT, {"scheme": "SCT", "value": "18639004", "meaning": "Left kidney"}, [185, 102, 83]),
    "liver lesion": (_MORPH, {"scheme": "SCT", "value": "4147007", "meaning": "Mass"}, [255, 0, 255]),
    "lesion": (_MORPH, {"scheme": "SCT", "value": "4147007", "meaning": "Mass"}, [255, 0, 255]),
    "tumor": (_MORPH, {"scheme": "SCT", "value": "108369006", "meaning": "Neoplasm"}, [255, 0, 255]),
    # regions of region-based models (BraTS, KiTS): the union, coded as what it is
    "whole tumor": (_MORPH, {"scheme": "SCT", "value": "108369006", "meaning": "Neoplasm"}, [0, 200, 0]),
    "tumor core": (_MORPH, {"scheme": "SCT", "value": "108369006", "meaning": "Neoplasm"}, [255, 0, 0]),
    "kidney": (_ANAT, {"scheme": "SCT", "value": "64033007", "meaning": "Kidney"}, [185, 102, 83]),
    "masses": (_MORPH, {"scheme": "SCT", "value": "4147007", "meaning": "Mass"}, [255, 255, 0]),
    "mass": (_MORPH, {"scheme": "SCT", "value": "4147007", "meaning": "Mass"}, [255, 255, 0]),
    "cyst": (_MORPH, {"scheme": "SCT", "value": "367643001", "meaning": "Cyst"}, [0, 255, 255]),
}
_ALIASES = {"ed": "edema", "ncr": "necrotic core", "net": "necrotic core", "ncr/net": "necrotic core",
            "et": "enhancing tumor", "enhancing": "enhancing tumor", "necrotic": "necrotic core",
            "kidney_right": "right kidney", "kidney_left": "left kidney", "necrotic core": "necrotic core",
            "wt": "whole tumor", "tc": "tumor core", "whole tumour": "whole tumor", "tumour core": "tumor core"}

# Channel name (lower-case) → (modality, SeriesDescription regular expression).
CHANNEL_SELECTORS: dict[str, tuple[str, str]] = {
    "t1": ("MR", "^T1$"),
    "t1ce": ("MR", "(?i)^t1 ?(ce|c|gd|post)"),
    "t2": ("MR", "(?i)^t2$"),
    "flair": ("MR", "(?i)flair"),
    "ct": ("CT", ".*"),
}
_PALETTE = [[255, 255, 0], [255, 0, 0], [0, 128, 255], [0, 200, 0], [255, 0, 255], [0, 255, 255],
            [255, 128, 0], [128, 0, 255]]


def _norm_name(name: str) -> str:
    key = re.sub(r"[\s_]+", " ", name.strip().lower())
    return _ALIASES.get(key, _ALIASES.get(name.strip().lower(), key))


def label_entry(value: int, name: str) -> dict[str, Any]:
    """A card label; SNOMED CT codes for the TEAM.md labels, a generic 'Tissue' code otherwise."""
    known = LABEL_CODES.get(_norm_name(name))
    if known is None:
        category, type_, colour = _TISSUE, {"scheme": "SCT", "value": "85756007", "meaning": "Tissue"}, \
            _PALETTE[(value - 1) % len(_PALETTE)]
    else:
        category, type_, colour = known
    pretty = name.replace("_", " ").strip()
    pretty = pretty[:1].upper() + pretty[1:]
    return {"value": int(value), "name": pretty, "category": dict(category), "type": dict(type_),
            "color": list(colour)}


def channel_entry(name: str, modality: str | None = None) -> dict[str, str]:
    """A card input channel with the series selector for a known channel name."""
    known = CHANNEL_SELECTORS.get(name.strip().lower())
    if known is None:
        mod = (modality or "MR").upper()
        return {"name": name, "modality": mod, "series_description": f"(?i){re.escape(name)}"}
    mod, rx = known
    return {"name": name, "modality": (modality or mod).upper(), "series_description": rx}


def make_card(*, name: str, version: str, channel_names: Sequence[str], labels: Mapping[str, int],
              target_spacing: Sequence[float | None], patch_size: Sequence[int],
              normalization: Sequence[Mapping[str, Any]], description: str = "",
              intended_use: str = INTENDED_USE, crop_to_nonzero: bool = True, tile_step: float = 0.5,
              mirror_axes: Sequence[int] = (), activation: str = "softmax",
              largest_component: Sequence[int | Sequence[int]] = (),
              provenance: Mapping[str, Any] | None = None, modalities: Sequence[str] | None = None,
              regions: Mapping[str, Sequence[int]] | None = None, aggregation: str = "float32") -> dict[str, Any]:
    """A model card dict (schema ``pacsnode.model_card/1``); ``labels`` maps names to values,
    background (value 0) is skipped. Softmax labels are sorted by value; sigmoid outputs keep the
    order given (output channel c is painted with the c-th value), each with its ``regions`` entry."""
    lab = [(int(v), str(k)) for k, v in labels.items() if int(v) != 0]
    if activation == "softmax":
        lab.sort()
    regions = regions or {}
    return {
        "schema": "pacsnode.model_card/1",
        "name": name,
        "version": version,
        "description": description,
        "intended_use": intended_use,
        "inputs": [channel_entry(c, modalities[i] if modalities else None) for i, c in enumerate(channel_names)],
        "target_spacing": [None if s is None else float(s) for s in target_spacing],  # None: 2-D slice axis
        "patch_size": [int(p) for p in patch_size],
        "normalization": [dict(n) for n in normalization],
        "crop_to_nonzero": bool(crop_to_nonzero),
        "tile_step": float(tile_step),
        "mirror_axes": [int(a) for a in mirror_axes],
        **({"aggregation": aggregation} if aggregation != "float32" else {}),
        "activation": activation,
        "labels": [{**label_entry(v, n), **({"region": [int(r) for r in regions[n]]} if n in regions else {})}
                   for v, n in lab],
        "postprocessing": {"largest_component": [int(v) if isinstance(v, int) else [int(x) for x in v]
                                                 for v in largest_component]},
        "provenance": dict(provenance or {}),
    }


def validate_card(card: Mapping[str, Any]) -> dict[str, Any]:
    """Validate with the node's ``ModelCard`` and return the normalised dict (raises ``ModelError``)."""
    from pacsnode.inference.card import ModelCard

    return ModelCard.from_dict(dict(card)).to_dict()
