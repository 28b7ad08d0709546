"""Pick each model input channel's series in a study by the card's selectors."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.errors import InvalidDicomError

from pacsnode.errors import VolumeError

__all__ = ["SeriesInfo", "ChannelSelector", "scan_series", "select_series"]

log = logging.getLogger(__name__)


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
                ds = pydicom.dcmread(f, stop_before_pixels=True,
                                     specific_tags=["SeriesInstanceUID", "Modality", "SeriesDescription",
                                                    "SeriesNumber", "FrameOfReferenceUID", "SOPClassUID"])
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
            modality=str(ds.get("Modality", "")),
            series_description=str(ds.get("SeriesDescription", "")),
            series_number=number,
            frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
            files=tuple(sorted(f for f, _ in items)),
        ))
    out.sort(key=lambda s: (s.series_number, s.series_instance_uid))
    return out


def select_series(
    study: str | Path | Iterable[str | Path] | Sequence[SeriesInfo],
    inputs: Sequence[ChannelSelector],
) -> dict[str, SeriesInfo]:
    """Map each input channel (card order) to the series matching its modality and description regex.

    Several matches: the highest SeriesNumber (the latest acquisition) wins and the choice is logged.
    No match: a :class:`VolumeError` naming every missing channel and the series that were found.
    """
    if isinstance(study, Sequence) and study and isinstance(study[0], SeriesInfo):
        found = list(study)  # type: ignore[arg-type]
    else:
        found = scan_series(study)  # type: ignore[arg-type]
    chosen: dict[str, SeriesInfo] = {}
    missing = []
    for ch in inputs:
        rx = re.compile(ch.series_description)
        hits = [s for s in found
                if s.modality.upper() == ch.modality.upper() and rx.search(s.series_description)]
        if not hits:
            missing.append(f"{ch.name} (Modality {ch.modality}, SeriesDescription matching {ch.series_description!r})")
            continue
        best = max(hits, key=lambda s: (s.series_number, len(s.files)))
        if len(hits) > 1:
            log.warning("channel %s: %d series match, using SeriesInstanceUID %s (highest SeriesNumber %d)",
                        ch.name, len(hits), best.series_instance_uid, best.series_number)
        chosen[ch.name] = best
    if missing:
        seen = ", ".join(f"{s.series_description or '(no description)'} ({s.modality})" for s in found) or "none"
        raise VolumeError(
            f"every model input channel needs a series, got no series for {'; '.join(missing)}; "
            f"series found: {seen}"
        )
    return chosen
