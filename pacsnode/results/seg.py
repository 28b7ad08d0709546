"""A model's label map → one DICOM Segmentation (highdicom), aligned with its source series.

:func:`write_seg` is the one place that maps a model card and a label map onto
``highdicom.seg.Segmentation``. What it guarantees (DESIGN.md §3, and highdicom's viewer
checklist):

- BINARY by default (what viewers display); FRACTIONAL (probabilities) and LABELMAP on request;
- one segment per card label, numbered 1..N in label-value order, each described with the card's
  SNOMED CT category and type, its recommended display colour (CIELab; a fixed one when the card
  has none) and the algorithm
  (family "Artificial Intelligence", model name, version, model file sha256);
- every segment keeps a frame for every source frame (``omit_empty_frames=False``): empty
  segments are described and present, and each frame carries one Derivation Image reference
  to its source instance;
- a new Series Instance UID per call and a series description that says it is AI output;
- for multi-series models the other input series are referenced as further source images.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

import pacsnode
from pacsnode.errors import ResultsError
from pacsnode.results.card import CardLabel, CodeValue, ResultCard, result_card
from pacsnode.results.iod_cache import install as _memoise_iod_lookups
from pacsnode.results.viewer_support import without_background_segment

_memoise_iod_lookups()  # highdicom's per-source-image IOD look-ups: ~1.5 s of a 4-series brain SEG + SR

__all__ = ["SegType", "write_seg", "seg_series_description", "segment_numbers", "SEG_SOP_CLASS_UIDS"]

log = logging.getLogger(__name__)

_MAX_LO = 64
# colours for labels whose card gives none (distinct on grey images; segment n takes entry n-1)
DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230),
)


class SegType(enum.StrEnum):
    """The Segmentation Type written; values are the config strings (route.seg_type)."""

    BINARY = "binary"
    FRACTIONAL = "fractional"
    LABELMAP = "labelmap"


# The SOP class each Segmentation Type is written as (highdicom: LABELMAP is the Label Map
# Segmentation Storage SOP class); the conformance statement lists them as the SCU's.
SEG_SOP_CLASS_UIDS: dict[SegType, str] = {
    SegType.BINARY: "1.2.840.10008.5.1.4.1.1.66.4",
    SegType.FRACTIONAL: "1.2.840.10008.5.1.4.1.1.66.4",
    SegType.LABELMAP: "1.2.840.10008.5.1.4.1.1.66.7",
}


def seg_series_description(card: ResultCard, kind: str = "SEG") -> str:
    """'AI SEG brain-tumor 0.1.0 - not for clinical use', shortened to fit 64 characters."""
    tail = " - not for clinical use"
    head = f"AI {kind} {card.name} {card.version}"
    return (head[: _MAX_LO - len(tail)] + tail).strip()


def segment_numbers(card: Any) -> dict[int, int]:
    """Label value → segment number (1..N in label-value order), as write_seg assigns them."""
    rc = result_card(card)
    return {lb.value: i for i, lb in enumerate(rc.labels, start=1)}


def _code(c: CodeValue) -> Code:
    return Code(value=c.value, scheme_designator=c.scheme, meaning=c.meaning)


def algorithm_identification(card: ResultCard, model_sha256: str) -> hd.AlgorithmIdentificationSequence:
    """AI family, model name and version, and the model file's sha256 as a parameter."""
    return hd.AlgorithmIdentificationSequence(
        name=card.name[:_MAX_LO],
        family=codes.cid7162.ArtificialIntelligence,
        version=card.version[:_MAX_LO],
        source="pacsnode",
        parameters={"model_sha256": model_sha256},
    )


def _description(
    number: int, label: CardLabel, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    # every segment gets a recommended display colour (IHE AIR): the card's, or a fixed one by number
    rgb = label.color if label.color is not None else DEFAULT_COLORS[(number - 1) % len(DEFAULT_COLORS)]
    color = hd.color.CIELabColor.from_rgb(*rgb)
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label.name[:_MAX_LO],
        segmented_property_category=_code(label.category),
        segmented_property_type=_code(label.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=color,
    )


def _n_frames(sources: Sequence[Dataset]) -> int:
    if len(sources) == 1 and int(sources[0].get("NumberOfFrames", 1) or 1) > 1:
        return int(sources[0].NumberOfFrames)
    return len(sources)


def _check_labels(labels: np.ndarray, sources: Sequence[Dataset], card: ResultCard) -> None:
    if labels.ndim != 3:
        raise ResultsError(f"labels must be a 3-D array [k, i, j], got shape {labels.shape}")
    expected = (_n_frames(sources), int(sources[0].Rows), int(sources[0].Columns))
    if labels.shape != expected:
        raise ResultsError(
            f"labels must match the source series (slices, rows, columns) = {expected}, got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ResultsError(f"labels must be an integer array, got dtype {labels.dtype}")
    valid = {0} | {lb.value for lb in card.labels}
    present = {int(v) for v in np.unique(labels)}
    if not present <= valid:
        raise ResultsError(
            f"labels must hold only 0 and the card's label values {sorted(valid - {0})}, "
            f"got {sorted(present - valid)}"
        )


def _segment_numbers(labels: np.ndarray, card: ResultCard) -> np.ndarray:
    """[k, i, j] label values → [k, i, j] uint8 segment numbers (segment n = card.labels[n-1], 0 none).

    highdicom reads a 3-D integer array as segment numbers and writes the same frames as from the
    [k, i, j, N] binary stack, without building that stack: a 300×512² CT's SEG took 1.8 s to
    build instead of 4.8 s and 300 MB less memory."""
    if any(lb.region for lb in card.labels):  # regions overlap (whole tumour ⊃ core): one binary plane each
        return np.stack([np.isin(labels, lb.members) for lb in card.labels], axis=-1)
    lut = np.zeros(256, dtype=np.uint8)
    for n, lb in enumerate(card.labels, start=1):
        lut[lb.value] = n
    return lut[labels]


def _fractional(probabilities: np.ndarray, labels: np.ndarray, card: ResultCard) -> np.ndarray:
    """[K, k, i, j] probabilities → [k, i, j, N] float32 in [0, 1], one channel per card label.

    K = N + 1 (softmax, background channel 0, then the labels in value order) or
    K = N (one sigmoid channel per card label, in value order).
    """
    probabilities = np.asarray(probabilities)
    n = len(card.labels)
    if probabilities.ndim != 4 or probabilities.shape[1:] != labels.shape:
        raise ResultsError(
            f"probabilities must be [K, k, i, j] with [k, i, j] = {labels.shape}, got {probabilities.shape}"
        )
    if probabilities.shape[0] == n + 1:
        channels = list(range(1, n + 1))
    elif probabilities.shape[0] == n:  # sigmoid: output c is the card's c-th label (regions_class_order)
        channels = [lb.channel if lb.channel is not None else i for i, lb in enumerate(card.labels)]
    else:
        raise ResultsError(
            f"probabilities must have {n + 1} channels (background + labels) or {n} (one per label), "
            f"got {probabilities.shape[0]}"
        )
    out = np.stack([probabilities[c] for c in channels], axis=-1).astype(np.float32)
    if not np.isfinite(out).all() or out.min() < 0.0 or out.max() > 1.0:
        raise ResultsError(
            f"probabilities must be finite values from 0 to 1, got range [{np.nanmin(out)}, {np.nanmax(out)}]"
        )
    return out


def write_seg(
    source_datasets: Sequence[Dataset],
    labels: np.ndarray,
    card: Any,
    *,
    model_sha256: str,
    seg_type: str | SegType = SegType.BINARY,
    probabilities: np.ndarray | None = None,
    further_source_datasets: Sequence[Dataset] = (),
    source_frames: Sequence[int] | None = None,
    series_number: int = 900,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    manufacturer: str = "pacsnode",
    device_serial_number: str = "0",
    software_versions: str | None = None,
) -> hd.seg.Segmentation:
    """Build the SEG of one model run.

    ``source_datasets`` are the reference series' instances in Volume order, so that
    ``labels[k]`` (uint8 [k, i, j]) segments ``source_datasets[k]``. ``card`` is a model card
    (C's ModelCard, its JSON mapping or a :class:`ResultCard`). ``further_source_datasets``
    are the instances of the model's other input series (same study and frame of reference),
    referenced but not used for geometry. For one Enhanced (multi-frame) source, pass
    ``source_frames`` (Volume.frames' frame numbers, slice k → frame) unless slice k is frame
    k + 1. For FRACTIONAL, ``probabilities`` is float32
    [K, k, i, j] (see :func:`_fractional`). Returns a highdicom Segmentation (a pydicom
    Dataset) with a new Series Instance UID unless one is given.
    """
    rc = result_card(card)
    kind = SegType(seg_type.lower() if isinstance(seg_type, str) else seg_type)
    sources = list(source_datasets)
    if not sources:
        raise ResultsError("source_datasets must hold the reference series' instances, got none")
    if not (isinstance(model_sha256, str) and len(model_sha256) == 64):
        raise ResultsError(f"model_sha256 must be 64 hex digits, got {model_sha256!r}")
    labels = np.asarray(labels)
    _check_labels(labels, sources, rc)
    if source_frames is not None:
        # one multi-frame source: slice k is frame source_frames[k]; highdicom wants frame order
        order = [int(f) - 1 for f in source_frames]
        if len(sources) != 1 or sorted(order) != list(range(labels.shape[0])):
            raise ResultsError(
                "source_frames must give each slice's 1-based frame number of the one multi-frame "
                f"source, a permutation of 1..{labels.shape[0]}, got {list(source_frames)[:8]}"
            )
        inverse = np.argsort(order)  # frame f holds slice inverse[f]
        labels = labels[inverse]
        if probabilities is not None:
            probabilities = np.asarray(probabilities)[:, inverse]

    if kind is SegType.FRACTIONAL:
        if probabilities is None:
            raise ResultsError("seg_type 'fractional' needs probabilities [K, k, i, j], got None")
        pixels = _fractional(probabilities, labels, rc)
    else:
        pixels = _segment_numbers(labels, rc)

    algorithm = algorithm_identification(rc, model_sha256)
    descriptions = [_description(n, lb, algorithm) for n, lb in enumerate(rc.labels, start=1)]
    hd_type = {
        SegType.BINARY: hd.seg.SegmentationTypeValues.BINARY,
        SegType.FRACTIONAL: hd.seg.SegmentationTypeValues.FRACTIONAL,
        SegType.LABELMAP: hd.seg.SegmentationTypeValues.LABELMAP,
    }[kind]
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type=hd_type,
            segment_descriptions=descriptions,
            series_instance_uid=series_instance_uid or hd.UID(),
            series_number=series_number,
            sop_instance_uid=sop_instance_uid or hd.UID(),
            instance_number=instance_number,
            manufacturer=manufacturer,
            manufacturer_model_name=f"pacsnode {rc.name}"[:_MAX_LO],
            software_versions=software_versions or f"pacsnode {pacsnode.__version__}; model {rc.version}",
            device_serial_number=device_serial_number,
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            max_fractional_value=255,
            content_label="AI_SEG",
            content_description=f"{rc.name} {rc.version}"[:_MAX_LO],
            omit_empty_frames=False,
            further_source_images=list(further_source_datasets) or None,
            series_description=seg_series_description(rc, "SEG"),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ResultsError(f"the SEG could not be built from the model output: {exc}") from exc
    if kind is SegType.LABELMAP:  # no "Background" item: OHIF colours segment i by item i
        without_background_segment(seg)
    log.info(
        "SEG %s: %s %d segments, %d frames, series %s",
        seg.SOPInstanceUID, kind.value, len(descriptions), int(seg.NumberOfFrames), seg.SeriesInstanceUID,
    )
    return seg
