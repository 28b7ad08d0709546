"""Changes to a model card at export time: input selectors, label codes, a partial card merged in.

Used by ``distill export`` and ``distill import-nnunet`` (docs/model-card.md). The edits apply in
this order, and the result is then validated by the node's own validator:

1. ``merge`` — a partial card (JSON object) merged onto the card: objects key by key, ``inputs``
   entries matched to the card's channels by ``name`` and ``labels`` entries to its labels by
   ``value`` (neither can add or remove one: the network fixes them), any other value replaced;
2. ``selectors`` — ``NAME=REGEX``: the SeriesDescription regular expression of input channel NAME;
3. ``label_codes`` / ``label_categories`` — ``LABEL=SCHEME:VALUE:MEANING``: the segmented property
   type / category code of a label given by its value or (case-insensitive) name.

Every bad edit is one ``ConfigError`` naming the option, the value received and what is valid.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pacsnode.errors import ConfigError

__all__ = ["parse_input_selector", "parse_code", "merge_card", "read_card_patch", "edit_card"]


def parse_input_selector(text: str) -> tuple[str, str]:
    """``NAME=REGEX`` → (name, regex); the regex is checked to compile."""
    name, sep, regex = text.partition("=")
    if not sep or not name.strip() or not regex:
        raise ConfigError(f"--input-selector must be NAME=REGEX, e.g. 'T1=(?i)mprage', got {text!r}")
    try:
        re.compile(regex)
    except re.error as exc:
        raise ConfigError(f"--input-selector {name.strip()} must give a valid regular expression ({exc}), "
                          f"got {regex!r}") from None
    return name.strip(), regex


def parse_code(text: str, option: str = "--label-code") -> tuple[str, dict[str, str]]:
    """``LABEL=SCHEME:VALUE:MEANING`` → (label, code); the meaning may itself hold colons."""
    label, sep, code = text.partition("=")
    parts = code.split(":", 2)
    if not sep or not label.strip() or len(parts) != 3 or not all(p.strip() for p in parts):
        raise ConfigError(f"{option} must be LABEL=SCHEME:VALUE:MEANING, e.g. 'Edema=SCT:79654002:Edema', "
                          f"got {text!r}")
    scheme, value, meaning = (p.strip() for p in parts)
    return label.strip(), {"scheme": scheme, "value": value, "meaning": meaning}


def _merge_dicts(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge_dicts(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _merge_entries(entries: list[dict[str, Any]], patch: Any, key: str, where: str) -> None:
    if not isinstance(patch, list) or not all(isinstance(p, Mapping) and key in p for p in patch):
        raise ConfigError(f"--merge-card {where} must be a list of objects each with {key!r}, got "
                          f"{json.dumps(patch)[:80]}")
    by_key = {str(e[key]).lower() if key == "name" else e[key]: e for e in entries}
    for p in patch:
        k = str(p[key]).lower() if key == "name" else p[key]
        if k not in by_key:
            valid = ", ".join(str(e[key]) for e in entries)
            raise ConfigError(f"--merge-card {where} entries must match the card's by {key}, got "
                              f"{json.dumps(p[key])}; valid: {valid}")
        _merge_dicts(by_key[k], {n: v for n, v in p.items() if n != key})


def merge_card(card: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``card`` with ``patch`` merged in (neither is modified); see the module docstring."""
    if not isinstance(patch, Mapping):
        raise ConfigError(f"--merge-card must hold a JSON object, got {type(patch).__name__}")
    out = copy.deepcopy(dict(card))
    rest = {k: v for k, v in patch.items() if k not in ("inputs", "labels")}
    if "inputs" in patch:
        _merge_entries(out.get("inputs", []), patch["inputs"], "name", "inputs")
    if "labels" in patch:
        _merge_entries(out.get("labels", []), patch["labels"], "value", "labels")
    return _merge_dicts(out, rest)


def read_card_patch(path: str | Path) -> dict[str, Any]:
    """A partial card from a JSON file; a missing file or bad JSON is one ConfigError."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--merge-card must be an existing JSON file, got {str(path)!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--merge-card {path} must hold valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--merge-card {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _find_label(labels: list[dict[str, Any]], which: str, option: str) -> dict[str, Any]:
    for lab in labels:
        if which == str(lab.get("value")) or which.lower() == str(lab.get("name", "")).lower():
            return lab
    valid = ", ".join(f"{lab.get('value')} ({lab.get('name')})" for lab in labels)
    raise ConfigError(f"{option} must name a label of the card by value or name, got {which!r}; valid: {valid}")


def edit_card(card: Mapping[str, Any], *, merge: Mapping[str, Any] | None = None,
              selectors: Iterable[str] = (), label_codes: Iterable[str] = (),
              label_categories: Iterable[str] = ()) -> dict[str, Any]:
    """``card`` with the edits applied, in the order of the module docstring (not yet validated)."""
    out = merge_card(card, merge) if merge else copy.deepcopy(dict(card))
    inputs = out.get("inputs", [])
    for text in selectors:
        name, regex = parse_input_selector(text)
        match = [c for c in inputs if str(c.get("name", "")).lower() == name.lower()]
        if not match:
            raise ConfigError(f"--input-selector must name an input channel of the card, got {name!r}; "
                              f"valid: {', '.join(str(c.get('name')) for c in inputs)}")
        match[0]["series_description"] = regex
    for option, field, texts in (("--label-code", "type", label_codes),
                                 ("--label-category", "category", label_categories)):
        for text in texts:
            which, code = parse_code(text, option)
            _find_label(out.get("labels", []), which, option)[field] = code
    return out
