"""Write phantom volumes as DICOM series and studies with realistic, clearly synthetic headers.

Geometry follows the team convention: ``array`` is [k, i, j] (slice, row, column) and
``affine_lps`` maps (k, i, j, 1) to LPS millimetres. Column j runs along the row
cosine, row i along the column cosine (Image Orientation (Patient) = row cosine \\
column cosine), PixelSpacing = (|affine[:, 1]|, |affine[:, 2]|) and slice k sits at
``affine @ (k, 0, 0, 1)``. The k column may point with or against the slice normal
(both slice directions are written as given; InstanceNumber follows k).

Classic CT: int16 stored values, HU = RescaleSlope * stored + RescaleIntercept.
Classic MR: uint16; integral arrays in range are stored as they are, anything else is
scaled with RescaleSlope/RescaleIntercept. ``enhanced=True`` writes one Enhanced CT/MR
multi-frame instance with shared and per-frame functional groups and a dimension index.
UIDs are deterministic: derived from the study seed, the series and the voxels.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from .orientation import reorient

if TYPE_CHECKING:
    from .case import PhantomCase

__all__ = [
    "StudyInfo",
    "TRANSFER_SYNTAXES",
    "MR_PROTOCOLS",
    "geometry_from_affine",
    "write_series",
    "write_study",
    "read_back",
]

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "j2k": JPEG2000Lossless,
}

_IMPLEMENTATION_UID = generate_uid(entropy_srcs=["pacsnode.distillation.phantoms"])
_MANUFACTURER = "pacsnode synthetic"
_MODEL = "distillation.phantoms"
_SYNTHETIC_NOTE = "SYNTHETIC PHANTOM - NOT A PATIENT - NOT FOR CLINICAL USE"

# Plausible acquisition parameters per brain contrast (ms).
MR_PROTOCOLS: dict[str, dict[str, Any]] = {
    "T1": {"ScanningSequence": "GR\\IR", "SequenceVariant": "SP\\MP", "RepetitionTime": 2000.0,
           "EchoTime": 2.5, "InversionTime": 900.0, "FlipAngle": 9.0, "SequenceName": "*tfl3d1"},
    "T1ce": {"ScanningSequence": "GR\\IR", "SequenceVariant": "SP\\MP", "RepetitionTime": 2000.0,
             "EchoTime": 2.5, "InversionTime": 900.0, "FlipAngle": 9.0, "SequenceName": "*tfl3d1",
             "ContrastBolusAgent": "GADOLINIUM", "ContrastBolusRoute": "IV"},
    "T2": {"ScanningSequence": "SE", "SequenceVariant": "SK\\SP", "RepetitionTime": 3200.0,
           "EchoTime": 410.0, "FlipAngle": 120.0, "SequenceName": "*spc_314ns"},
    "FLAIR": {"ScanningSequence": "SE\\IR", "SequenceVariant": "SK\\SP\\MP", "RepetitionTime": 5000.0,
              "EchoTime": 390.0, "InversionTime": 1800.0, "FlipAngle": 120.0,
              "SequenceName": "*spcir_278ns"},
}

_CT_WINDOWS = ((40.0, 400.0, "ABDOMEN"), (60.0, 160.0, "LIVER"), (400.0, 1800.0, "BONE"))


def _uid(*parts: object) -> UID:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


@dataclass(frozen=True)
class StudyInfo:
    """Patient and study level attributes shared by all series of one study."""

    patient_name: str
    patient_id: str
    patient_birth_date: str
    patient_sex: str
    study_instance_uid: str
    frame_of_reference_uid: str
    study_date: str
    study_time: str
    study_id: str
    accession_number: str
    study_description: str
    body_part: str = ""
    institution: str = "PACSNODE PHANTOM LAB"

    @classmethod
    def synthetic(cls, seed: int, kind: str = "brain") -> StudyInfo:
        """A clearly synthetic patient and study, identical for identical (seed, kind)."""
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7919])
        tag = kind.upper()
        number = int(seed) % 10000
        birth = _dt.date(1940, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 60 * 365)))
        day = _dt.date(2024, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 365)))
        minute = int(rng.integers(7 * 60, 19 * 60))
        description = {"BRAIN": "MR BRAIN W/WO CONTRAST (PHANTOM)",
                       "CT": "CT ABDOMEN W CONTRAST (PHANTOM)"}.get(tag, f"{tag} PHANTOM")
        return cls(
            patient_name=f"PHANTOM^{tag}^{number:04d}",
            patient_id=f"SYN-{tag}-{int(seed):06d}",
            patient_birth_date=birth.strftime("%Y%m%d"),
            patient_sex=str(rng.choice(["F", "M"])),
            study_instance_uid=_uid("study", kind, seed),
            frame_of_reference_uid=_uid("frame-of-reference", kind, seed),
            study_date=day.strftime("%Y%m%d"),
            study_time=f"{minute // 60:02d}{minute % 60:02d}00",
            study_id=f"{number:04d}",
            accession_number=f"SYN{int(seed):07d}"[:16],
            study_description=description,
            body_part={"BRAIN": "HEAD", "CT": "ABDOMEN"}.get(tag, ""),
        )


@dataclass(frozen=True)
class _Geometry:
    row_cosine: np.ndarray       # direction of increasing j
    column_cosine: np.ndarray    # direction of increasing i
    pixel_spacing: tuple[float, float]   # (row spacing = |di|, column spacing = |dj|)
    slice_spacing: float
    positions: np.ndarray        # [k, 3] ImagePositionPatient of each slice


def geometry_from_affine(affine_lps: np.ndarray, n_slices: int) -> _Geometry:
    """Split a [k, i, j] → LPS affine into DICOM plane geometry; refuses shear."""
    a = np.asarray(affine_lps, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {a.shape}")
    dk, di, dj = a[:3, 0], a[:3, 1], a[:3, 2]
    sk, si, sj = (float(np.linalg.norm(v)) for v in (dk, di, dj))
    if min(sk, si, sj) <= 0:
        raise ValueError(f"affine columns must have positive length, got {sk}, {si}, {sj}")
    row, col = dj / sj, di / si
    normal = np.cross(row, col)
    if abs(float(row @ col)) > 1e-4 or abs(abs(float(normal @ dk / sk)) - 1) > 1e-4:
        raise ValueError("affine must have orthogonal axes (no shear) to be written as DICOM planes, "
                         f"got columns k={dk.round(4).tolist()}, i={di.round(4).tolist()}, j={dj.round(4).tolist()}")
    positions = a[:3, 3][None, :] + np.arange(n_slices)[:, None] * dk[None, :]
    return _Geometry(row, col, (si, sj), sk, positions)


def _ds(values: Sequence[float]) -> list[str]:
    """Decimal String values, at most 16 characters each."""
    out = []
    for v in values:
        v = 0.0 if abs(v) < 5e-11 else float(v)
        s = f"{v:.10g}"
        if len(s) > 16:
            s = f"{v:.8g}"
        out.append(s)
    return out


def _parse_ts(transfer_syntax: str | UID | None) -> UID:
    if transfer_syntax is None:
        return ExplicitVRLittleEndian
    key = str(transfer_syntax)
    if key.lower() in TRANSFER_SYNTAXES:
        return TRANSFER_SYNTAXES[key.lower()]
    if key in TRANSFER_SYNTAXES.values():
        return UID(key)
    valid = ", ".join(f"{k} ({v})" for k, v in TRANSFER_SYNTAXES.items())
    raise ValueError(f"transfer_syntax must be one of {valid}, got {transfer_syntax!r}")


def _stored(array: np.ndarray, modality: str,
            rescale: tuple[float, float] | None) -> tuple[np.ndarray, tuple[float, float] | None, bool]:
    """Stored pixel values, the rescale that recovers ``array`` from them, and signedness."""
    arr = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("array must be finite, got NaN or infinite voxels")
    if modality == "CT":
        slope, intercept = rescale if rescale is not None else (1.0, -1024.0)
        if slope <= 0:
            raise ValueError(f"rescale slope must be positive, got {slope}")
        stored = np.rint((arr - intercept) / slope)
        if stored.min() < -32768 or stored.max() > 32767:
            raise ValueError(f"CT values {arr.min():.1f}..{arr.max():.1f} do not fit int16 with "
                             f"rescale ({slope}, {intercept}); give a wider rescale")
        return stored.astype(np.int16), (float(slope), float(intercept)), True
    if rescale is not None:
        slope, intercept = rescale
        if slope <= 0:
            raise ValueError(f"rescale slope must be positive, got {slope}")
    else:
        lo, hi = float(arr.min()), float(arr.max())
        integral = bool(np.all(arr == np.rint(arr)))
        if integral and lo >= 0 and hi <= 65535:
            return arr.astype(np.uint16), None, False
        intercept = min(lo, 0.0)
        slope = max(hi - intercept, 1e-6) / 65535.0
    stored = np.rint((arr - intercept) / slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError(f"MR values {arr.min():.3f}..{arr.max():.3f} do not fit uint16 with "
                         f"rescale ({slope}, {intercept})")
    return stored.astype(np.uint16), (float(slope), float(intercept)), False


def _window(array: np.ndarray, modality: str,
            window: Sequence[tuple[float, float]] | None) -> tuple[list[float], list[float], list[str]]:
    if window is not None:
        return [w[0] for w in window], [w[1] for w in window], [f"USER{n + 1}" for n in range(len(window))]
    if modality == "CT":
        return ([w[0] for w in _CT_WINDOWS], [w[1] for w in _CT_WINDOWS], [w[2] for w in _CT_WINDOWS])
    fg = array[array > 0]
    if fg.size == 0:
        return [0.5], [1.0], ["DEFAULT"]
    lo, hi = np.percentile(fg, [1.0, 99.5])
    return [float(np.round((lo + hi) / 2, 2))], [float(np.round(max(hi - lo, 1.0), 2))], ["DEFAULT"]


def _fingerprint(array: np.ndarray, affine: np.ndarray) -> str:
    h = hashlib.sha1(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
    h.update(np.asarray(affine, np.float64).tobytes())
    h.update(str(array.dtype).encode())
    return h.hexdigest()


def _common(ds: Dataset, study: StudyInfo, modality: str, series_description: str,
            series_uid: str, series_number: int, body_part: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.IssuerOfPatientID = "PACSNODE-SYNTHETIC"
    ds.PatientBirthDate = study.patient_birth_date
    ds.PatientSex = study.patient_sex
    ds.PatientIdentityRemoved = "NO"
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    ds.ReferringPhysicianName = "SYNTHETIC^REFERRER"
    ds.StudyDescription = study.study_description
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = series_description
    ds.SeriesDate = study.study_date
    ds.SeriesTime = study.study_time
    ds.ProtocolName = series_description
    ds.BodyPartExamined = body_part or study.body_part
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = _MANUFACTURER
    ds.ManufacturerModelName = _MODEL
    ds.DeviceSerialNumber = "SYN-0001"
    ds.SoftwareVersions = "0.1.0"
    ds.InstitutionName = study.institution
    ds.StationName = "PHANTOM"
    ds.ImageComments = _SYNTHETIC_NOTE
    ds.ContentDate = study.study_date
    ds.ContentTime = study.study_time
    ds.AcquisitionDate = study.study_date
    ds.AcquisitionTime = study.study_time
    ds.BurnedInAnnotation = "NO"
    if modality == "MR":
        ds.MagneticFieldStrength = 3.0
        ds.ImagedNucleus = "1H"
        ds.MRAcquisitionType = "3D"
        ds.ScanOptions = ""
        ds.EchoTrainLength = 1
        ds.ScanningSequence = "RM"       # research mode, until a protocol in ``extra`` says more
        ds.SequenceVariant = "NONE"
        ds.RepetitionTime = None
        ds.EchoTime = None
    else:
        ds.KVP = 120.0
        ds.ConvolutionKernel = "STANDARD"
        ds.XRayTubeCurrent = 200


def _pixel_module(ds: Dataset, rows: int, cols: int, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = "PACSNODE_PHANT"
    return meta


def _encode(ds: Dataset, pixels: np.ndarray, ts: UID) -> None:
    if ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        ds.file_meta.TransferSyntaxUID = ts
        return
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.compress(ts, np.ascontiguousarray(pixels), generate_instance_uid=False)


def write_series(array: np.ndarray, affine_lps: np.ndarray, out_dir: str | Path, *,
                 modality: str, series_description: str, study: StudyInfo | None = None,
                 orientation: str | None = None, flip_slices: bool = False,
                 enhanced: bool = False, transfer_syntax: str | UID | None = None,
                 rescale: tuple[float, float] | None = None, series_number: int = 1,
                 window: Sequence[tuple[float, float]] | None = None, body_part: str = "",
                 extra: Mapping[str, Any] | None = None) -> list[Path]:
    """Write ``array`` [k, i, j] as one DICOM series into ``out_dir``; return the files in k order.

    ``orientation`` ("axial" | "sagittal" | "coronal" | "oblique") first reorients the
    volume with :func:`distillation.phantoms.orientation.reorient` (``flip_slices``
    reverses the slice numbering); reorient labels the same way to keep the truth.
    ``transfer_syntax``: "explicit" (default), "implicit", "rle", "jpegls", "j2k" or a UID.
    ``rescale``: (slope, intercept); CT defaults to (1, -1024). ``window``: [(center, width)].
    ``extra``: further attributes by keyword (e.g. EchoTime), set on every instance.
    """
    modality = str(modality).upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be CT or MR, got {modality!r}")
    array = np.asarray(array)
    if array.ndim != 3 or min(array.shape) < 1:
        raise ValueError(f"array must be 3-D [k, i, j] with at least one voxel per axis, got shape {array.shape}")
    affine = np.asarray(affine_lps, dtype=np.float64)
    if orientation is not None:
        array, affine = reorient(array, affine, orientation, flip_slices,
                                 cval=-1024.0 if modality == "CT" else 0.0)
    elif flip_slices:
        raise ValueError("flip_slices needs an orientation, got orientation=None")
    ts = _parse_ts(transfer_syntax)
    if ts == JPEG2000Lossless and min(array.shape[1:]) < 32:
        raise ValueError("JPEG 2000 encoding (OpenJPEG) needs images of at least 32x32 pixels, "
                         f"got {array.shape[1]}x{array.shape[2]}; use rle or jpegls")
    geo = geometry_from_affine(affine, array.shape[0])
    stored, rescale_used, signed = _stored(array, modality, rescale)
    study = study or StudyInfo.synthetic(int(_fingerprint(array, affine)[:8], 16) % 100000,
                                         "brain" if modality == "MR" else "ct")
    centers, widths, explanations = _window(np.asarray(array, np.float64), modality, window)
    series_uid = _uid("series", study.study_instance_uid, series_number, series_description,
                      orientation, flip_slices, enhanced, str(ts), _fingerprint(array, affine))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    iop = _ds(list(geo.row_cosine) + list(geo.column_cosine))
    image_type = ["ORIGINAL", "PRIMARY",
                  "AXIAL" if modality == "CT" and orientation in (None, "axial") else "OTHER"]
    n = array.shape[0]
    if enhanced:
        sop_class = EnhancedCTImageStorage if modality == "CT" else EnhancedMRImageStorage
        sop_uid = _uid(series_uid, "multiframe")
        ds = Dataset()
        ds.file_meta = _file_meta(sop_class, sop_uid)
        _common(ds, study, modality, series_description, series_uid, series_number, body_part)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = 1
        for keyword in ("AcquisitionDate", "AcquisitionTime", "ScanOptions", "ImagedNucleus",
                        "EchoTrainLength", "KVP", "XRayTubeCurrent", "ConvolutionKernel",
                        "ScanningSequence", "SequenceVariant", "RepetitionTime", "EchoTime"):
            if keyword in ds:
                delattr(ds, keyword)
        rest = _enhanced(ds, geo, iop, n, modality, image_type, rescale_used, centers, widths,
                         explanations, study, series_description, dict(extra or {}))
        _pixel_module(ds, array.shape[1], array.shape[2], signed)
        ds.NumberOfFrames = n
        for key, value in rest.items():
            setattr(ds, key, value)
        _encode(ds, stored, ts)
        path = out / "MF00001.dcm"
        ds.save_as(path, enforce_file_format=True)
        log.debug("wrote enhanced %s series %s (%d frames)", modality, series_uid, n)
        return [path]
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    paths = []
    for k in range(n):
        sop_uid = _uid(series_uid, "instance", k)
        ds = Dataset()
        ds.file_meta = _file_meta(sop_class, sop_uid)
        _common(ds, study, modality, series_description, series_uid, series_number, body_part)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = image_type
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = _ds(geo.positions[k])
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = _ds(geo.pixel_spacing)
        ds.SliceThickness = _ds([geo.slice_spacing])[0]
        ds.SpacingBetweenSlices = _ds([geo.slice_spacing])[0]
        normal = np.cross(geo.row_cosine, geo.column_cosine)
        ds.SliceLocation = _ds([float(geo.positions[k] @ normal)])[0]
        _pixel_module(ds, array.shape[1], array.shape[2], signed)
        ds.WindowCenter = _ds(centers)
        ds.WindowWidth = _ds(widths)
        ds.WindowCenterWidthExplanation = explanations
        if rescale_used is not None:
            ds.RescaleSlope = _ds([rescale_used[0]])[0]
            ds.RescaleIntercept = _ds([rescale_used[1]])[0]
            ds.RescaleType = "HU" if modality == "CT" else "US"
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        _encode(ds, stored[k], ts)
        path = out / f"IM{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    log.debug("wrote %s series %s (%d instances)", modality, series_uid, n)
    return paths


def _item(**kw: Any) -> Dataset:
    item = Dataset()
    for key, value in kw.items():
        setattr(item, key, value)
    return item


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _enhanced(ds: Dataset, geo: _Geometry, iop: list[str], n: int, modality: str,
              image_type: list[str], rescale: tuple[float, float] | None,
              centers: list[float], widths: list[float], explanations: list[str],
              study: StudyInfo, series_description: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Enhanced CT/MR modules: functional groups, dimension index, image type.

    Acquisition parameters in ``extra`` (RepetitionTime, EchoTime, ...) go into their
    functional-group macros; what is left is returned for the top level.
    """
    ds.ImageType = [*image_type[:2], "VOLUME", "NONE"]
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ContentQualification = "RESEARCH"
    ds.AcquisitionDateTime = study.study_date + study.study_time
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.AcquisitionDuration = 180.0
    if modality == "MR":
        ds.ComplexImageComponent = "MAGNITUDE"
        ds.AcquisitionContrast = "UNKNOWN"
        ds.ResonantNucleus = "1H"
        ds.KSpaceFiltering = "NONE"
        ds.MagneticFieldStrength = 3.0
        ds.ApplicableSafetyStandardAgency = "IEC"
        ds.ImageComments = _SYNTHETIC_NOTE
        ds.PulseSequenceName = series_description[:16]
        ds.EchoPulseSequence = "GRADIENT"
        ds.MultiPlanarExcitation = "NO"
        ds.PhaseContrast = "NO"
        ds.TimeOfFlightContrast = "NO"
        ds.SteadyStatePulseSequence = "NONE"
        ds.EchoPlanarPulseSequence = "NO"
        ds.SaturationRecovery = "NO"
        ds.SpectrallySelectedSuppression = "NONE"
        ds.OversamplingPhase = "NONE"
        ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
        ds.SegmentedKSpaceTraversal = "SINGLE"
        ds.RectilinearPhaseEncodeReordering = "LINEAR"
        ds.NumberOfKSpaceTrajectories = 1
        ds.CoverageOfKSpace = "FULL"
    else:
        ds.AcquisitionNumber = 1
    dim_uid = _uid(ds.SeriesInstanceUID, "dimension-organization")
    ds.DimensionOrganizationSequence = DicomSequence([_item(DimensionOrganizationUID=dim_uid)])
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = DicomSequence([
        _item(DimensionOrganizationUID=dim_uid, DimensionIndexPointer=0x00209056,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="Stack ID"),
        _item(DimensionOrganizationUID=dim_uid, DimensionIndexPointer=0x00209057,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="In-Stack Position Number"),
    ])
    spacing = _ds([geo.slice_spacing])[0]
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([_item(
        PixelSpacing=_ds(geo.pixel_spacing), SliceThickness=spacing, SpacingBetweenSlices=spacing)])
    shared.PlaneOrientationSequence = DicomSequence([_item(ImageOrientationPatient=iop)])
    shared.FrameVOILUTSequence = DicomSequence([_item(
        WindowCenter=_ds(centers), WindowWidth=_ds(widths), WindowCenterWidthExplanation=explanations)])
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    shared.PixelValueTransformationSequence = DicomSequence([_item(
        RescaleSlope=_ds([slope])[0], RescaleIntercept=_ds([intercept])[0],
        RescaleType="HU" if modality == "CT" else "US")])
    frame_type = [*image_type[:2], "VOLUME", "NONE"]
    if modality == "MR":
        shared.MRImageFrameTypeSequence = DicomSequence([_item(
            FrameType=frame_type, PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
            VolumeBasedCalculationTechnique="NONE", ComplexImageComponent="MAGNITUDE",
            AcquisitionContrast="UNKNOWN")])
    else:
        shared.CTImageFrameTypeSequence = DicomSequence([_item(
            FrameType=frame_type, PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
            VolumeBasedCalculationTechnique="NONE")])
    if modality == "MR":
        extra = _mr_macros(shared, extra, geo, n)
        region = _code("12738006", "SCT", "Brain")
    else:
        _ct_macros(shared, geo, ds.SeriesInstanceUID)
        region = _code("818981001", "SCT", "Abdomen")
    shared.FrameAnatomySequence = DicomSequence([_item(
        AnatomicRegionSequence=DicomSequence([region]), FrameLaterality="U")])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in range(n):
        frame = Dataset()
        frame.FrameContentSequence = DicomSequence([_item(
            FrameAcquisitionNumber=1, StackID="1", InStackPositionNumber=k + 1,
            DimensionIndexValues=[1, k + 1],
            FrameAcquisitionDateTime=study.study_date + study.study_time,
            FrameReferenceDateTime=study.study_date + study.study_time,
            FrameAcquisitionDuration=1000.0)])
        frame.PlanePositionSequence = DicomSequence([_item(ImagePositionPatient=_ds(geo.positions[k]))])
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    return extra


def _mr_macros(shared: Dataset, extra: dict[str, Any], geo: _Geometry, n: int) -> dict[str, Any]:
    """The Enhanced MR functional-group macros, filled from a contrast's parameters."""
    p = {key: extra.pop(key) for key in ("RepetitionTime", "EchoTime", "InversionTime", "FlipAngle",
                                         "ScanningSequence", "SequenceVariant", "SequenceName")
         if key in extra}
    shared.MRTimingAndRelatedParametersSequence = DicomSequence([_item(
        RepetitionTime=float(p.get("RepetitionTime", 2000.0)), FlipAngle=float(p.get("FlipAngle", 90.0)),
        EchoTrainLength=1, RFEchoTrainLength=1, GradientEchoTrainLength=1,
        SpecificAbsorptionRateSequence=DicomSequence([_item(
            SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY", SpecificAbsorptionRateValue=0.5)]),
        OperatingModeSequence=DicomSequence([_item(
            OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL")]))])
    shared.MRFOVGeometrySequence = DicomSequence([_item(
        InPlanePhaseEncodingDirection="ROW", MRAcquisitionFrequencyEncodingSteps=256,
        MRAcquisitionPhaseEncodingStepsInPlane=256, MRAcquisitionPhaseEncodingStepsOutOfPlane=n,
        PercentSampling=100.0, PercentPhaseFieldOfView=100.0)])
    shared.MREchoSequence = DicomSequence([_item(EffectiveEchoTime=float(p.get("EchoTime", 10.0)))])
    ir = "IR" in str(p.get("ScanningSequence", ""))
    shared.MRModifierSequence = DicomSequence([_item(
        InversionRecovery="YES" if ir else "NO", FlowCompensation="NONE", T2Preparation="NO",
        SpectrallySelectedExcitation="NONE", SpatialPresaturation="NONE", PartialFourier="NO",
        ParallelAcquisition="NO", **({"InversionTimes": [float(p.get("InversionTime", 0.0))]} if ir else {}))])
    shared.MRImagingModifierSequence = DicomSequence([_item(
        MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
        TransmitterFrequency=127.74, PixelBandwidth=200.0)])
    shared.MRReceiveCoilSequence = DicomSequence([_item(
        ReceiveCoilName="HEAD", ReceiveCoilManufacturerName="", ReceiveCoilType="VOLUME", QuadratureReceiveCoil="YES")])
    shared.MRTransmitCoilSequence = DicomSequence([_item(TransmitCoilName="BODY", TransmitCoilManufacturerName="", TransmitCoilType="BODY")])
    shared.MRAveragesSequence = DicomSequence([_item(NumberOfAverages=1.0)])
    return extra


def _ct_macros(shared: Dataset, geo: _Geometry, series_uid: str) -> None:
    """The Enhanced CT functional-group macros of a routine helical abdomen."""
    centre = [float(v) for v in geo.positions.mean(axis=0)]
    shared.IrradiationEventIdentificationSequence = DicomSequence([_item(
        IrradiationEventUID=_uid(series_uid, "irradiation"))])
    shared.CTAcquisitionTypeSequence = DicomSequence([_item(
        AcquisitionType="SPIRAL", ConstantVolumeFlag="NO", FluoroscopyFlag="NO")])
    shared.CTAcquisitionDetailsSequence = DicomSequence([_item(
        DataCollectionDiameter=500.0, RevolutionTime=0.5, TotalCollimationWidth=40.0,
        SingleCollimationWidth=0.625, TableHeight=150.0, GantryDetectorTilt=0.0)])
    shared.CTTableDynamicsSequence = DicomSequence([_item(
        TableSpeed=80.0, TableFeedPerRotation=40.0, SpiralPitchFactor=1.0)])
    shared.CTPositionSequence = DicomSequence([_item(
        TablePosition=0.0, ReconstructionTargetCenterPatient=centre, DataCollectionCenterPatient=centre)])
    shared.CTGeometrySequence = DicomSequence([_item(
        DistanceSourceToDetector=1040.0, DistanceSourceToDataCollectionCenter=570.0)])
    shared.CTReconstructionSequence = DicomSequence([_item(
        ConvolutionKernel="STANDARD", ConvolutionKernelGroup="SOFT_TISSUE",
        ReconstructionDiameter=400.0, ReconstructionAlgorithm="FILTER_BACK_PROJ",
        ReconstructionAngle=360.0, ImageFilter="NONE",
        ReconstructionPixelSpacing=[float(v) for v in geo.pixel_spacing])])
    shared.CTExposureSequence = DicomSequence([_item(
        ExposureTimeInms=500.0, XRayTubeCurrentInmA=200.0, ExposureInmAs=100.0, ExposureModulationType="NONE")])
    shared.CTXRayDetailsSequence = DicomSequence([_item(
        KVP=120.0, FocalSpots=[1.2], FilterType="BODY", FilterMaterial=["ALUMINUM"])])


def _acquisition_study(seed: int, kind: str, kw: Mapping[str, Any]) -> StudyInfo:
    study = StudyInfo.synthetic(seed, kind)
    acquisition = (kw.get("orientation") or "axial", bool(kw.get("flip_slices")), bool(kw.get("enhanced")),
                   str(_parse_ts(kw.get("transfer_syntax"))))
    if acquisition == ("axial", False, False, str(ExplicitVRLittleEndian)):
        return study
    return replace(study, study_instance_uid=_uid("study", kind, seed, *acquisition),
                   frame_of_reference_uid=_uid("frame-of-reference", kind, seed, *acquisition))


def write_study(case: PhantomCase, out_dir: str | Path, *, study: StudyInfo | None = None,
                **kw: Any) -> dict[str, list[Path]]:
    """Write a phantom case as one study: one series per channel under ``out_dir/NNN_<channel>``.

    All series share StudyInstanceUID and FrameOfReferenceUID; SeriesDescription is
    exactly the channel name ("T1", "T1ce", "T2", "FLAIR"; CT: "CT ABDOMEN").
    Keyword arguments are passed to :func:`write_series`. Without ``study``, each seed and
    acquisition (orientation, slice order, Enhanced, transfer syntax) is a study of its own, so
    two of them sent to one PACS never merge; the plain axial classic study is
    ``StudyInfo.synthetic(seed, kind)``.
    """
    study = study or _acquisition_study(case.seed, case.kind, kw)
    out = Path(out_dir)
    written: dict[str, list[Path]] = {}
    for number, (channel, image) in enumerate(case.images.items(), start=1):
        extra = dict(MR_PROTOCOLS.get(channel, {})) if case.modality == "MR" else {}
        extra.update(kw.get("extra") or {})
        safe = "".join(c if c.isalnum() else "_" for c in channel)
        written[channel] = write_series(
            image, case.affine_lps, out / f"{number:03d}_{safe}", modality=case.modality,
            series_description=channel, study=study, series_number=number,
            extra=extra,
            **{k: v for k, v in kw.items() if k != "extra"})
    return written


def read_back(paths: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """Minimal reader for tests and checks: (array [k, i, j] after rescale, LPS affine).

    Classic series are sorted by position along the slice normal; an Enhanced
    multi-frame file is read frame by frame the same way.
    """
    datasets = [pydicom.dcmread(p) for p in paths]
    frames: list[tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float], float, float]] = []
    for ds in datasets:
        pixels = ds.pixel_array.astype(np.float64)
        if "PerFrameFunctionalGroupsSequence" in ds:
            shared = ds.SharedFunctionalGroupsSequence[0]
            iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
            ps = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
            pvt = shared.PixelValueTransformationSequence[0]
            slope, intercept = float(pvt.RescaleSlope), float(pvt.RescaleIntercept)
            pixels = pixels.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
            for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
                ipp = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
                frames.append((pixels[f], ipp, iop, (ps[0], ps[1]), slope, intercept))
        else:
            frames.append((pixels, np.array(ds.ImagePositionPatient, float),
                           np.array(ds.ImageOrientationPatient, float),
                           (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
                           float(getattr(ds, "RescaleSlope", 1.0)),
                           float(getattr(ds, "RescaleIntercept", 0.0))))
    iop = frames[0][2]
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    frames.sort(key=lambda f: float(f[1] @ normal))
    array = np.stack([f[0] * f[4] + f[5] for f in frames])
    affine = np.eye(4)
    affine[:3, 1] = col * frames[0][3][0]
    affine[:3, 2] = row * frames[0][3][1]
    affine[:3, 3] = frames[0][1]
    if len(frames) > 1:
        affine[:3, 0] = (frames[-1][1] - frames[0][1]) / (len(frames) - 1)
    else:
        affine[:3, 0] = normal
    return array, affine
