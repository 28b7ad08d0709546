"""Helpers for the results and delivery tests: a tiny synthetic MR study written with pydicom.

(Engineer B's distillation.phantoms.dicom.write_series had not landed when these tests were
written; this writer makes the few single-frame MR instances the tests need.)
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

BRAIN_CARD = {
    "schema": "pacsnode.model_card/1",
    "name": "brain-tumor",
    "version": "0.1.0",
    "labels": [
        {"value": 1, "name": "Edema",
         "category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"},
         "type": {"scheme": "SCT", "value": "79654002", "meaning": "Edema"},
         "color": [255, 255, 0]},
        {"value": 2, "name": "Necrotic core",
         "category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"},
         "type": {"scheme": "SCT", "value": "6574001", "meaning": "Necrosis"},
         "color": [255, 0, 0]},
        {"value": 3, "name": "Enhancing tumor",
         "category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"},
         "type": {"scheme": "SCT", "value": "108369006", "meaning": "Neoplasm"},
         "color": [0, 0, 255]},
    ],
}
SHA = "ab" * 32
SPACING = (2.0, 1.5, 1.25)  # (z, y, x) mm


def make_series(
    shape: tuple[int, int, int] = (6, 16, 20),
    *,
    description: str = "T1",
    study: Dataset | None = None,
    for_uid: str | None = None,
    seed: int = 0,
) -> list[Dataset]:
    """Single-frame MR instances in Volume order (k increasing along the slice normal)."""
    rng = np.random.default_rng(seed)
    study_uid = study.StudyInstanceUID if study is not None else generate_uid()
    for_uid = for_uid or generate_uid()
    series_uid = generate_uid()
    out = []
    for k in range(shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Phantom^Brain"
        ds.PatientID = "PH0001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = "20240101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = "ACC1"
        ds.ReferringPhysicianName = ""
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1 + seed
        ds.SeriesDescription = description
        ds.Modality = "MR"
        ds.Manufacturer = "phantom"
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.EchoTime = 10
        ds.RepetitionTime = 500
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = 3
        ds.SliceThickness = SPACING[0]
        ds.ImagePositionPatient = [-10.0, -12.0, k * SPACING[0]]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [SPACING[1], SPACING[2]]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = shape[1], shape[2]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = rng.integers(0, 1000, size=shape[1:], dtype=np.uint16).tobytes()
        out.append(ds)
    return out


def make_labels(shape: tuple[int, int, int] = (6, 16, 20), *, with_label3: bool = False) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[1:5, 3:12, 4:15] = 1
    labels[2:4, 5:9, 6:10] = 2
    if with_label3:
        labels[3, 6:8, 7:9] = 3
    return labels


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run dicom3tools' dciodvfy; return (error lines, warning lines)."""
    proc = subprocess.run(["/usr/bin/dciodvfy", "-new", str(path)], capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln for ln in lines if re.match(r"^\s*Error", ln)]
    warnings = [ln for ln in lines if re.match(r"^\s*Warning", ln)]
    return errors, warnings
