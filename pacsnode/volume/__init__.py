"""DICOM series → :class:`Volume`: array, LPS affine, geometry checks, channel selection."""

from pacsnode.volume.geometry import SliceGeometry, check_frames
from pacsnode.volume.reader import Volume, list_dicom_files, read_series
from pacsnode.volume.resample import resample_to_reference
from pacsnode.volume.select import SeriesInfo, scan_series, select_series

__all__ = [
    "Volume",
    "read_series",
    "list_dicom_files",
    "SliceGeometry",
    "check_frames",
    "resample_to_reference",
    "SeriesInfo",
    "scan_series",
    "select_series",
]
