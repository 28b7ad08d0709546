"""Pick each model input channel's series in a study: the card's selectors, or this site's.

A model card names each input's series by Modality and a SeriesDescription regex. A site
whose scanner names its series differently ("AX T1 MPRAGE") sets its own rule per input in
config.toml (``[models.NAME.inputs.CHANNEL]``, :class:`pacsnode.config.InputSelector`):
description and protocol-name regexes, sequence attributes, contrast. :func:`input_selectors`
merges the two; :meth:`SeriesSelector.rejects` says why a series is not an input's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import pydicom
from pydicom.errors import InvalidDicomError

from pacsnode.errors import ConfigError, VolumeError

__all__ = ["SeriesInfo", "ChannelSelector", "SeriesSelector", "input_selectors", "scan_series",
           "select_series"]

log = logging.getLogger(__name__)

_TAGS = ["SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber", "FrameOfReferenceUID",
         "SOPClassUID", "ProtocolName", "SequenceName", "ScanningSequence", "SequenceVariant", "ImageType",
         "ContrastBolusAgent", "BodyPartExamined", "StudyInstanceUID"]


class ChannelSelector(Protocol):
    """What a model card input provides (see :class:`pacsnode.inference.card.InputChannel`)."""

    name: str
    modality: str
    series_description: str


@dataclass(frozen=True)
class SeriesInfo:
    """One series found on disk (headers only)."""

    series_instance_uid: str
    modality: str
    series_description: str
    series_number: int
    frame_of_reference_uid: str
    files: tuple[Path, ...]
    protocol_name: str = ""
    sequence_name: str = ""
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    image_type: tuple[str, ...] = ()
    contrast_agent: str = ""
    body_part: str = ""
    sop_class_uid: str = ""
    study_instance_uid: str = ""

    @property
    def label(self) -> str:
        """How a person names this series: its description and number."""
        return f"{self.series_description or '(no description)'} (#{self.series_number}, {self.modality})"


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _norm(values: Iterable[str]) -> set[str]:
    return {v.strip().upper() for v in values}


@dataclass(frozen=True)
class SeriesSelector:
    """The rule that finds one model input's series; every criterion set must hold."""

    name: str
    modality: str
    series_description: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    image_type: tuple[str, ...] = ()
    contrast: str = "any"
    source: str = "model card"

    def rejects(self, s: SeriesInfo) -> list[str]:
        """Why ``s`` is not this input's series (empty when it is)."""
        why = []
        if s.modality.upper() != self.modality.upper():
            why.append(f"Modality {s.modality or '(none)'} is not {self.modality}")
        for attr, keyword in (("series_description", "SeriesDescription"), ("protocol_name", "ProtocolName"),
                              ("sequence_name", "SequenceName")):
            pattern = getattr(self, attr)
            value = getattr(s, attr)
            if pattern and not _regex(pattern).search(value):
                why.append(f"{keyword} {value!r} does not match {pattern!r}")
        for attr, keyword in (("scanning_sequence", "ScanningSequence"), ("sequence_variant", "SequenceVariant"),
                              ("image_type", "ImageType")):
            wanted = getattr(self, attr)
            have = getattr(s, attr)
            lacking = sorted(_norm(wanted) - _norm(have))
            if lacking:
                shown = "\\".join(have) or "(none)"
                why.append(f"{keyword} {shown} lacks {', '.join(lacking)}")
        if self.contrast == "with" and not s.contrast_agent:
            why.append("ContrastBolusAgent is absent (a contrast series is wanted)")
        if self.contrast == "without" and s.contrast_agent:
            why.append(f"ContrastBolusAgent is {s.contrast_agent!r} (a series without contrast is wanted)")
        return why

    def describe(self) -> str:
        """The criteria in words, e.g. ``Modality MR, SeriesDescription matching '^T1$'``."""
        parts = [f"Modality {self.modality}"]
        for attr, keyword in (("series_description", "SeriesDescription"), ("protocol_name", "ProtocolName"),
                              ("sequence_name", "SequenceName")):
            if getattr(self, attr):
                parts.append(f"{keyword} matching {getattr(self, attr)!r}")
        for attr, keyword in (("scanning_sequence", "ScanningSequence"), ("sequence_variant", "SequenceVariant"),
                              ("image_type", "ImageType")):
            if getattr(self, attr):
                parts.append(f"{keyword} with {', '.join(getattr(self, attr))}")
        if self.contrast != "any":
            parts.append("ContrastBolusAgent " + ("present" if self.contrast == "with" else "absent"))
        return ", ".join(parts)


def _from_card(ch: Any) -> SeriesSelector:
    if isinstance(ch, SeriesSelector):
        return ch
    return SeriesSelector(name=ch.name, modality=ch.modality, series_description=ch.series_description)


def input_selectors(inputs: Sequence[ChannelSelector], overrides: Mapping[str, Any] | None = None, *,
                    model: str = "") -> list[SeriesSelector]:
    """One selector per card input, in card order: this site's rule where ``overrides``
    (``[models.NAME.inputs]``, :class:`pacsnode.config.InputSelector` values) has one for it,
    the card's otherwise. An override for an input the card does not have is a
    :class:`ConfigError` naming the key and the card's inputs."""
    overrides = overrides or {}
    names = [ch.name for ch in inputs]
    for name in overrides:
        if name not in names:
            raise ConfigError(f"models.{model or 'NAME'}.inputs.{name} must name an input of the model, got "
                              f"{name!r}; valid: {', '.join(names)}")
    out = []
    for ch in inputs:
        o = overrides.get(ch.name)
        if o is None:
            out.append(_from_card(ch))
            continue
        out.append(SeriesSelector(
            name=ch.name, modality=o.modality or ch.modality, series_description=o.series_description,
            protocol_name=o.protocol_name, sequence_name=o.sequence_name,
            scanning_sequence=tuple(o.scanning_sequence), sequence_variant=tuple(o.sequence_variant),
            image_type=tuple(o.image_type), contrast=o.contrast,
            source=f"config models.{model or 'NAME'}.inputs.{ch.name}"))
    return out


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def _values(ds: pydicom.Dataset, keyword: str) -> tuple[str, ...]:
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    if isinstance(value, str | bytes):
        return (str(value).strip(),)
    try:
        return tuple(str(v).strip() for v in value)
    except TypeError:
        return (str(value).strip(),)


def scan_series(paths: str | Path | Iterable[str | Path]) -> list[SeriesInfo]:
    """Group every DICOM file under ``paths`` (a study directory or series directories) by series."""
    roots = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for root in roots:
        if not root.exists():
            raise VolumeError(f"series directory must exist, got {str(root)!r}")
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_TAGS)
            except (InvalidDicomError, OSError, EOFError, ValueError):
                continue
            uid = str(ds.get("SeriesInstanceUID", ""))
            if uid:
                groups.setdefault(uid, []).append((f, ds))
    out = []
    for uid, items in groups.items():
        ds = items[0][1]
        try:
            number = int(ds.get("SeriesNumber", 0) or 0)
        except (TypeError, ValueError):
            number = 0
        out.append(SeriesInfo(
            series_instance_uid=uid,
            modality=_text(ds, "Modality"),
            series_description=_text(ds, "SeriesDescription"),
            series_number=number,
            frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
            files=tuple(sorted(f for f, _ in items)),
            protocol_name=_text(ds, "ProtocolName"),
            sequence_name=_text(ds, "SequenceName"),
            scanning_sequence=_values(ds, "ScanningSequence"),
            sequence_variant=_values(ds, "SequenceVariant"),
            image_type=_values(ds, "ImageType"),
            contrast_agent=_text(ds, "ContrastBolusAgent"),
            body_part=_text(ds, "BodyPartExamined"),
            sop_class_uid=_text(ds, "SOPClassUID"),
            study_instance_uid=_text(ds, "StudyInstanceUID"),
        ))
    out.sort(key=lambda s: (s.series_number, s.series_instance_uid))
    return out


def select_series(
    study: str | Path | Iterable[str | Path] | Sequence[SeriesInfo],
    inputs: Sequence[ChannelSelector | SeriesSelector],
) -> dict[str, SeriesInfo]:
    """Map each input channel (card order) to the series its selector finds (card inputs are
    matched by modality and description regex; :class:`SeriesSelector` s by all their criteria).

    Several matches: the highest SeriesNumber (the latest acquisition) wins and the choice is logged.
    No match: a :class:`VolumeError` naming every missing channel and the series that were found.
    """
    if isinstance(study, Sequence) and not isinstance(study, str) and (not study or isinstance(study[0], SeriesInfo)):
        found = list(study)  # type: ignore[arg-type]
    else:
        found = scan_series(study)  # type: ignore[arg-type]
    chosen: dict[str, SeriesInfo] = {}
    missing = []
    for sel in map(_from_card, inputs):
        hits = [s for s in found if not sel.rejects(s)]
        if not hits:
            missing.append(f"{sel.name} ({sel.describe()})")
            continue
        best = max(hits, key=lambda s: (s.series_number, len(s.files)))
        if len(hits) > 1:
            log.warning("channel %s: %d series match, using SeriesInstanceUID %s (highest SeriesNumber %d)",
                        sel.name, len(hits), best.series_instance_uid, best.series_number)
        chosen[sel.name] = best
    if missing:
        seen = ", ".join(f"{s.series_description or '(no description)'} ({s.modality})" for s in found) or "none"
        raise VolumeError(
            f"every model input channel needs a series, got no series for {'; '.join(missing)}; "
            f"series found: {seen}"
        )
    return chosen
