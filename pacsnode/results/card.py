"""The part of a model card the result writers need, read from any card shape.

The writers accept engineer C's :class:`pacsnode.inference.card.ModelCard`, a parsed
``pacsnode.model_card/1`` JSON mapping, or this module's :class:`ResultCard`. Whatever
comes in is read once, on entry, into a frozen :class:`ResultCard`; a missing field is a
:class:`~pacsnode.errors.ResultsError` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pacsnode.errors import ResultsError

__all__ = ["CodeValue", "CardLabel", "ResultCard", "result_card"]


@dataclass(frozen=True)
class CodeValue:
    """A coded concept: (scheme, value, meaning), e.g. ("SCT", "79654002", "Edema")."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class CardLabel:
    """One label of the card: the voxel value, its name, SNOMED CT codes and display colour."""

    value: int
    name: str
    category: CodeValue
    type: CodeValue
    color: tuple[int, int, int] | None = None
    region: tuple[int, ...] = ()   # a region-based model's region: the painted values whose union it is
    channel: int | None = None     # its position in the card's labels (a sigmoid model's output channel)

    @property
    def members(self) -> tuple[int, ...]:
        """The label-map values inside this segment: the region's, or the label's own value."""
        return self.region or (self.value,)


@dataclass(frozen=True)
class ResultCard:
    """Name, version and labels (sorted by value) of a model."""

    name: str
    version: str
    labels: tuple[CardLabel, ...]


def _field(obj: Any, key: str, where: str) -> Any:
    if isinstance(obj, Mapping):
        if key in obj:
            return obj[key]
    elif hasattr(obj, key):
        return getattr(obj, key)
    raise ResultsError(f"model card {where} must have a {key!r} field, got none")


def _code(obj: Any, where: str) -> CodeValue:
    if isinstance(obj, CodeValue):
        return obj
    if not isinstance(obj, Mapping) and hasattr(obj, "scheme_designator"):  # pydicom Code
        return CodeValue(str(obj.scheme_designator), str(obj.value), str(obj.meaning))
    return CodeValue(
        scheme=str(_field(obj, "scheme", where)),
        value=str(_field(obj, "value", where)),
        meaning=str(_field(obj, "meaning", where)),
    )


def _color(obj: Any, where: str) -> tuple[int, int, int] | None:
    if obj is None:
        return None
    rgb = tuple(obj)
    if len(rgb) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in rgb):
        raise ResultsError(f"model card {where} must be three integers from 0 to 255, got {obj!r}")
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def _label(obj: Any, index: int) -> CardLabel:
    if isinstance(obj, CardLabel):
        return obj
    where = f"labels[{index}]"
    value = _field(obj, "value", where)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise ResultsError(f"model card {where}.value must be an integer from 1 to 255, got {value!r}")
    color = None
    if isinstance(obj, Mapping):
        color, region = obj.get("color"), obj.get("region") or ()
    else:
        color, region = getattr(obj, "color", None), getattr(obj, "region", ()) or ()
    return CardLabel(
        region=tuple(int(v) for v in region),
        channel=index,
        value=value,
        name=str(_field(obj, "name", where)),
        category=_code(_field(obj, "category", where), f"{where}.category"),
        type=_code(_field(obj, "type", where), f"{where}.type"),
        color=_color(color, f"{where}.color"),
    )


def result_card(card: Any) -> ResultCard:
    """Read name, version and labels from a ModelCard, a card mapping or a ResultCard."""
    if isinstance(card, ResultCard):
        return card
    raw_labels = _field(card, "labels", "")
    if isinstance(raw_labels, str | bytes) or not isinstance(raw_labels, Sequence):
        raise ResultsError(f"model card labels must be a list, got {type(raw_labels).__name__}")
    labels = tuple(sorted((_label(x, i) for i, x in enumerate(raw_labels)), key=lambda lb: lb.value))
    if not labels:
        raise ResultsError("model card labels must list at least one label, got none")
    values = [lb.value for lb in labels]
    if len(set(values)) != len(values):
        raise ResultsError(f"model card label values must be unique, got {values}")
    return ResultCard(
        name=str(_field(card, "name", "")), version=str(_field(card, "version", "")), labels=labels
    )
