"""Which viewers show which Segmentation Type, and the LABELMAP layout that OHIF reads right.

What the viewers' own readers do with the node's SEGs is measured by tests/test_seg_readers.py
(dcmqi, 3D Slicer's SEG library; @cornerstonejs/adapters, OHIF 3.13's SEG loader, run in node)
and tests/test_ohif_browser.py (OHIF 3.13.2 in headless chromium):

- BINARY (the default): every one of them, voxel-exact, with the card's names and colours.
- LABELMAP: dcmqi and OHIF 3.13, once the SEG carries no "Background" segment 0 (OHIF takes
  segment i's name and colour from the i-th Segment Sequence item, so highdicom's background
  item shifted every colour by one); cornerstone's legacy loader (cornerstone-tools 4, as in
  OHIF 2) refuses it: "Could not retrieve the segment index".
- FRACTIONAL: dcmqi reads the probabilities; OHIF 3.13 and the legacy loader refuse it:
  "Fractional segmentations are not yet supported".
- Known gap, BINARY included: when the packed bits (rows x columns x frames) fill an odd number of
  bytes, DICOM pads the pixel data with one byte and OHIF 3.13.2 does not load the SEG ("The
  calculated length 19349 does not match the actual length 19350", then Orthanc's WADO-RS frames
  answer 400; seen once by hand with 63x63 frames); the adapters' buffer loader refuses it too
  (pinned in tests/test_seg_readers.py). Frames whose rows x columns is a multiple of 16 (512²,
  240², the demo's 96x76) never need the pad byte.

:func:`without_background_segment` is applied by :func:`pacsnode.results.write_seg` to every
LABELMAP; :func:`seg_type_warnings` gives ``pacsnode config check`` its lines.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom import Dataset

__all__ = ["VIEWERS_THAT_CANNOT_SHOW", "seg_type_warnings", "without_background_segment"]

VIEWERS_THAT_CANNOT_SHOW: dict[str, tuple[str, ...]] = {
    "binary": (),
    "labelmap": ("cornerstone's legacy SEG loader (cornerstone-tools 4, OHIF 2): "
                 "'Could not retrieve the segment index'",),
    "fractional": ("OHIF 3 (Cornerstone3D) and cornerstone's legacy SEG loader: "
                   "'Fractional segmentations are not yet supported'",),
}


def without_background_segment(seg: Dataset) -> Dataset:
    """Drop a LABELMAP's segment 0 item, so that Segment Sequence item i describes segment i.

    Pixel value 0 stays background (no segment); only the description goes. Returns ``seg``.
    """
    items = list(seg.SegmentSequence)
    kept = [item for item in items if int(item.SegmentNumber) != 0]
    if len(kept) != len(items):
        seg.SegmentSequence = kept
    return seg


def seg_type_warnings(routes: Iterable[Any]) -> list[str]:
    """One line per route whose SEG some viewers cannot show (routes: config RouteSettings)."""
    lines = []
    for route in routes:
        if "seg" not in tuple(getattr(route, "outputs", ("seg",))):
            continue
        seg_type = str(getattr(route, "seg_type", "binary"))
        viewers = VIEWERS_THAT_CANNOT_SHOW.get(seg_type, ())
        if viewers:
            lines.append(f"route {route.name}: seg_type {seg_type!r} is not shown by "
                         f"{'; '.join(viewers)}; 'binary' (the default) is shown by every viewer tested")
    return lines
