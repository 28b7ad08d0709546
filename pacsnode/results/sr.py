"""Segment volumes → a TID 1500 Measurement Report (Comprehensive 3D SR) that references the SEG.

One Volumetric ROI measurement group per SEG segment (empty ones too, with 0 mL): a
Referenced Segment content item pointing at the SEG instance and segment number, the
finding (the segment's SNOMED CT category and type), the algorithm, and its volume in
UCUM "ml". The observer is the device (the model, one Device Observer UID per model file),
never a person; classic source images are listed in the Image Library. docs/air.md lists the IHE
AI Results (AIR) requirements this content meets.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

import pacsnode
from pacsnode.errors import ResultsError
from pacsnode.results.card import result_card
from pacsnode.results.image_library import insert_image_library
from pacsnode.results.seg import seg_series_description, segment_numbers
from pacsnode.results.volumes import segment_volumes_ml

__all__ = ["write_sr", "MILLILITER", "SR_SOP_CLASS_UID"]

log = logging.getLogger(__name__)

MILLILITER = Code("ml", "UCUM", "milliliter")
SR_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage

_PROCEDURES = {
    "MR": Code("113091000", "SCT", "Magnetic resonance imaging"),
    "CT": Code("77477000", "SCT", "Computed tomography"),
}
_IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")


def _sct(c: Any) -> Code:
    return Code(value=c.value, scheme_designator=c.scheme, meaning=c.meaning)


def write_sr(
    seg_dataset: Dataset,
    labels: np.ndarray,
    card: Any,
    source_datasets: Sequence[Dataset],
    *,
    model_sha256: str,
    affine: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    volumes_ml: dict[int, float] | None = None,
    series_number: int = 901,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    manufacturer: str = "pacsnode",
    device_uid: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the volume report of one model run.

    ``seg_dataset`` is what :func:`~pacsnode.results.write_seg` returned for ``labels``
    (uint8 [k, i, j]); volumes come from ``volumes_ml`` (label value → mL) or are computed
    from ``affine`` (index → LPS mm) or ``spacing`` (z, y, x mm). ``source_datasets`` are
    the SEG's source instances (they are recorded as evidence with the SEG).
    """
    rc = result_card(card)
    if volumes_ml is None:
        volumes_ml = segment_volumes_ml(labels, rc, affine=affine, spacing=spacing)
    numbers = segment_numbers(rc)
    described = {int(item.SegmentNumber) for item in seg_dataset.SegmentSequence}
    missing = sorted(set(numbers.values()) - described)
    if missing:
        raise ResultsError(f"the SEG must describe segments {sorted(numbers.values())} of the card, "
                           f"it lacks {missing}")
    sources = list(source_datasets)
    if not sources:
        raise ResultsError("source_datasets must hold the SEG's source instances, got none")
    reference_series = sources[0].SeriesInstanceUID

    algorithm = hd.sr.AlgorithmIdentification(
        name=rc.name, version=rc.version, parameters=[f"model_sha256={model_sha256}"]
    )
    groups = []
    for lb in rc.labels:
        number = numbers[lb.value]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"{lb.name} (segment {number})"[:64]
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg_dataset.SOPClassUID,
                    sop_instance_uid=seg_dataset.SOPInstanceUID,
                    segment_number=number,
                    source_series=hd.sr.SourceSeriesForSegmentation(reference_series),
                ),
                finding_type=_sct(lb.type),
                finding_category=_sct(lb.category),
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=codes.SCT.Volume,
                        value=round(float(volumes_ml.get(lb.value, 0.0)), 6),
                        unit=MILLILITER,
                        algorithm_id=algorithm,
                    )
                ],
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            # stable per model file: the same algorithm is the same device in every report (AIR)
            uid=device_uid or generate_uid(entropy_srcs=["pacsnode device observer", model_sha256]),
            name=f"{rc.name} {rc.version}"[:64],
            manufacturer_name=manufacturer,
            model_name=rc.name[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURES.get(str(sources[0].get("Modality", "")), _IMAGING_PROCEDURE),
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
    )
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[seg_dataset, *sources],
            content=report,
            series_instance_uid=series_instance_uid or hd.UID(),
            series_number=series_number,
            sop_instance_uid=sop_instance_uid or hd.UID(),
            instance_number=instance_number,
            manufacturer=manufacturer,
            is_complete=True,
            series_description=seg_series_description(rc, "SR"),
            software_versions=f"pacsnode {pacsnode.__version__}",
        )
        # the Image Library (TID 1600) lists the source images, for viewers (AIR); added once the
        # SR is built, so that highdicom does not copy and re-parse an entry per slice
        # (image_library.py); highdicom describes classic single-frame images only, so an
        # Enhanced multi-frame source gets none
        if all("PixelSpacing" in d for d in sources):
            insert_image_library(sr, sources)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ResultsError(f"the SR could not be built: {exc}") from exc
    log.info("SR %s for SEG %s: %d segments", sr.SOPInstanceUID, seg_dataset.SOPInstanceUID, len(groups))
    return sr
