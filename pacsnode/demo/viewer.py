"""`pacsnode demo --viewer`: after the run, the demo's Orthanc again, with its DICOMweb plugin, and OHIF.

:func:`check_viewer` fails with one line before the demo starts when something the viewer needs is
missing (Orthanc's DICOMweb plugin, the OHIF dist); :func:`serve_viewer` re-opens the PACS's
storage from the demo's work folder, serves OHIF against it (:mod:`pacsnode.demo.ohif`) and
prints the URL that opens the study with its SEG, until Ctrl-C (or ``stop`` is set).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path

from pacsnode.demo.ohif import OhifServer, find_ohif_dist
from pacsnode.demo.orthanc import DICOMWEB_PLUGIN, OrthancServer, orthanc_available
from pacsnode.errors import PacsnodeError

__all__ = ["check_viewer", "serve_viewer"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_viewer(dist: str | Path | None) -> Path:
    """The OHIF dist to serve; a PacsnodeError naming what is missing otherwise."""
    if not orthanc_available():
        raise PacsnodeError("demo --viewer needs Orthanc as the demo's PACS, got none installed: "
                            "apt-get install orthanc orthanc-dicomweb (scripts/setup.sh does)")
    if not DICOMWEB_PLUGIN.exists():
        raise PacsnodeError(f"demo --viewer needs Orthanc's DICOMweb plugin at {DICOMWEB_PLUGIN}, got none: "
                            f"apt-get install orthanc-dicomweb (scripts/setup.sh does)")
    return find_ohif_dist(dist)


def serve_viewer(orthanc_workdir: Path, study_uid: str, seg_series_uid: str, dist: Path, *,
                 port: int = 0, stop: threading.Event | None = None,
                 say: Callable[[str], None] = print) -> None:
    """Serve OHIF on the PACS kept in ``orthanc_workdir`` until Ctrl-C or ``stop``."""
    orthanc = OrthancServer(Path(orthanc_workdir), _free_port(), _free_port(), dicomweb=True)
    with orthanc, OhifServer(dist, orthanc.url + "/dicom-web", port) as ohif:
        say(f"viewer: OHIF on {ohif.url} against the demo's PACS ({orthanc.url}/dicom-web)")
        say(f"open the study with its SEG: {ohif.study_url(study_uid, seg_series_uid)}")
        say("click a segment in the panel on the right to go to its slices; Ctrl-C stops the viewer and the PACS")
        stop = stop or threading.Event()
        try:
            while not stop.wait(0.5):  # a short wait, so that Ctrl-C is seen at once
                pass
        except KeyboardInterrupt:
            say("viewer stopped")
