"""The node's SEG in OHIF 3.13.2 in a real headless chromium, over Orthanc's DICOMweb plugin.

Orthanc (with Debian's orthanc-dicomweb) holds a source series and the SEG written from a known
label map; pacsnode.demo.ohif serves OHIF's prebuilt dist with a same-origin proxy to Orthanc's
DICOMweb; puppeteer-core drives Debian's chromium (tests/viewers/ohif_seg.mjs) to the study
with the SEG on display. Asserted: the SEG loaded, its segments are listed with the card's names
and colours, and the screenshot is tinted in each segment's colour exactly where the label map
has that label and nowhere else. The label map is the same on every slice, so whichever slice
OHIF shows, the expected picture is known; where the image lies on the screen is read from
cornerstone's camera in the page.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from test_results_support import BRAIN_CARD, SHA

from distillation.phantoms.dicom import StudyInfo, write_series
from pacsnode.demo.ohif import OhifServer
from pacsnode.demo.orthanc import OrthancServer
from pacsnode.results import write_seg
from tests.conftest import free_port

pytestmark = [pytest.mark.network, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
VIEWERS = REPO / "tests" / "viewers"
SHAPE = (12, 64, 64)


def _label_map() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[:, 8:56, 6:28] = 1  # Edema, yellow, left
    labels[:, 8:28, 36:58] = 2  # Necrotic core, red, top right
    labels[:, 36:56, 36:58] = 3  # Enhancing tumor, blue, bottom right
    return labels


def _colour_class(rgb: np.ndarray) -> np.ndarray:
    """0 grey (untinted), else the card label whose display colour tints the pixel (1 yellow, 2 red, 3 blue)."""
    r, g, b = (rgb[..., c].astype(int) for c in range(3))
    out = np.zeros(rgb.shape[:2], np.uint8)
    out[(r > b + 40) & (g > b + 40) & (abs(r - g) < 60)] = 1
    out[(r > g + 40) & (r > b + 40)] = 2
    out[(b > r + 40) & (b > g + 40)] = 3
    return out


def _expected_on_screen(labels2d: np.ndarray, place: dict, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per screen pixel: the label under it (-1 outside the image) and the pixels to check.

    ``place`` is where cornerstone draws the image (its camera, read in the page): the screen
    position of pixel (0, 0)'s outer corner and the screen step per row and per column."""
    rows, cols = labels2d.shape
    ys, xs = np.mgrid[0:size[1], 0:size[0]] + 0.5
    m = np.array([place["perRow"], place["perColumn"]]).T  # screen (x, y) = origin + m @ (i, j)
    inv = np.linalg.inv(m)
    d = np.stack([xs - place["origin"][0], ys - place["origin"][1]])
    fi, fj = np.tensordot(inv, d, axes=1)
    step = 3 / np.abs(m).max()

    def lookup(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        i, j = np.floor(a).astype(int), np.floor(b).astype(int)
        out = np.full(i.shape, -1)
        ok = (i >= 0) & (i < rows) & (j >= 0) & (j < cols)
        out[ok] = labels2d[i[ok], j[ok]]
        return out

    label = lookup(fi, fj)
    # on the canvas, clear of the 60-pixel margins where OHIF writes its overlay (dates, markers, icons)
    c = place["canvas"]
    interior = (label >= 0) & (xs > c["x"] + 60) & (xs < c["x"] + c["width"] - 60) \
        & (ys > c["y"] + 60) & (ys < c["y"] + c["height"] - 60)
    for di, dj in ((step, 0), (-step, 0), (0, step), (0, -step)):
        interior &= lookup(fi + di, fj + dj) == label
    return label, interior


@pytest.fixture(scope="module")
def viewer_peers() -> Path:
    dist = VIEWERS / "ohif-dist"
    for need, what in ((dist / "index.html", "OHIF's dist"), (VIEWERS / "node_modules" / "puppeteer-core", "puppeteer-core"),
                       (Path("/usr/bin/chromium"), "chromium")):
        if not need.exists():
            pytest.fail(f"{what} is missing at {need}: run scripts/setup.sh (make test does)")
    return dist


@pytest.mark.parametrize("seg_type", ["binary", "labelmap"])
def test_ohif_shows_the_seg_with_the_cards_names_colours_and_voxels(viewer_peers: Path, tmp_path: Path,
                                                                    seg_type: str) -> None:
    labels = _label_map()
    image = (400 + (np.indices(SHAPE).sum(0) % 7) * 10).astype(np.float32)
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = 2.0, 1.0, 1.0, 1.0
    affine[:3, 3] = [-32.0, -32.0, 0.0]
    paths = write_series(image, affine, tmp_path / "src", modality="MR", series_description="T1",
                         study=StudyInfo.synthetic(2500 + len(seg_type), "brain"))
    seg = write_seg([dcmread(p) for p in paths], labels, BRAIN_CARD, model_sha256=SHA, seg_type=seg_type)
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    names = [lb["name"] for lb in BRAIN_CARD["labels"]]

    orthanc = OrthancServer(tmp_path / "orthanc", free_port(), free_port(), dicomweb=True)
    with orthanc:
        orthanc.upload([*paths, tmp_path / "seg.dcm"])
        with OhifServer(viewer_peers, orthanc.url + "/dicom-web") as ohif:
            url = ohif.study_url(seg.StudyInstanceUID, seg.SeriesInstanceUID)
            proc = subprocess.run(["node", str(VIEWERS / "ohif_seg.mjs"), url, str(tmp_path / "ohif.json"),
                                   str(tmp_path / "ohif.png"), *names], capture_output=True, text=True,
                                  cwd=VIEWERS, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ohif.json").read_text())
    assert report["loaded"], f"{report.get('error')}; page: {report.get('text', '')[:500]}; " \
                             f"log: {report['log'][-15:]}"
    assert "Loading SEG" not in report["text"]
    assert "AI SEG brain-tumor 0.1.0" in report["text"]
    assert report["segments"] == {lb["name"]: [f"rgb({', '.join(map(str, lb['color']))})"]
                                  for lb in BRAIN_CARD["labels"]}

    shot = np.asarray(Image.open(tmp_path / "ohif.png").convert("RGB"))
    place = report["imageToScreen"]
    assert (place["rows"], place["columns"]) == SHAPE[1:]
    label, interior = _expected_on_screen(labels[0], place, (shot.shape[1], shot.shape[0]))
    seen = _colour_class(shot)
    for value in (1, 2, 3):
        region = interior & (label == value)
        assert region.sum() > 5000
        assert (seen[region] == value).mean() > 0.95, f"label {value}: tinted {np.bincount(seen[region], minlength=4)}"
    background = interior & (label == 0)
    assert background.sum() > 5000
    assert (seen[background] != 0).mean() < 0.01, "tint where the label map has no voxels"


def test_demo_viewer_reopens_the_pacs_and_serves_the_seg(viewer_peers: Path, tmp_path: Path) -> None:
    """What `pacsnode demo --viewer` does after the run: the PACS's storage re-opened with DICOMweb,
    OHIF served against it, and a URL that names the study and the SEG series."""
    import threading
    import time
    import urllib.parse
    import urllib.request

    from pacsnode.demo.viewer import serve_viewer

    labels = _label_map()
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    paths = write_series(np.full(SHAPE, 300, np.float32), affine, tmp_path / "src", modality="MR",
                         series_description="T1", study=StudyInfo.synthetic(2600, "brain"))
    seg = write_seg([dcmread(p) for p in paths], labels, BRAIN_CARD, model_sha256=SHA)
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    with OrthancServer(tmp_path / "orthanc", free_port(), free_port()) as pacs:  # the demo's PACS, no DICOMweb
        pacs.upload([*paths, tmp_path / "seg.dcm"])

    lines: list[str] = []
    stop = threading.Event()
    server = threading.Thread(target=serve_viewer, args=(tmp_path / "orthanc", seg.StudyInstanceUID,
                                                         seg.SeriesInstanceUID, viewer_peers),
                              kwargs={"stop": stop, "say": lines.append})
    server.start()
    try:
        deadline = time.monotonic() + 60
        while not any(line.startswith("open the study") for line in lines) and time.monotonic() < deadline:
            time.sleep(0.2)
        url = next(line.split(": ", 1)[1] for line in lines if line.startswith("open the study"))
        parts = urllib.parse.urlsplit(url)
        assert parts.path == "/viewer"
        assert urllib.parse.parse_qs(parts.query) == {"StudyInstanceUIDs": [seg.StudyInstanceUID],
                                                      "initialSeriesInstanceUID": [seg.SeriesInstanceUID]}
        base = f"{parts.scheme}://{parts.netloc}"
        with urllib.request.urlopen(url, timeout=30) as page:
            assert b"<title>" in page.read()  # the single-page app
        qido = f"{base}/dicom-web/studies/{seg.StudyInstanceUID}/series?Modality=SEG"
        with urllib.request.urlopen(qido, timeout=30) as resp:
            found = json.loads(resp.read())
        assert [s["0020000E"]["Value"][0] for s in found] == [seg.SeriesInstanceUID]  # kept across the restart
    finally:
        stop.set()
        server.join(timeout=60)
    assert not server.is_alive()
    assert lines[-1] == "click a segment in the panel on the right to go to its slices; Ctrl-C stops the viewer " \
                        "and the PACS"


@pytest.mark.parametrize(("args", "message"), [
    (["--ohif-dist", "/nonexistent"], "pacsnode: error: the viewer needs OHIF 3.13.2's prebuilt dist (a folder with "
     "index.html and app-config.js), got none at /nonexistent: npm pack @ohif/app@3.13.2 && tar xzf "
     "ohif-app-3.13.2.tgz package/dist, then pass --ohif-dist package/dist or set PACSNODE_OHIF_DIST; in a "
     "checkout, scripts/setup.sh puts it in tests/viewers/ohif-dist"),
    (["--storescp"], "pacsnode: error: demo --viewer needs Orthanc as the demo's PACS, got --storescp; drop one of "
     "them"),
])
def test_demo_viewer_refuses_at_once_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    import sys

    proc = subprocess.run([sys.executable, "-m", "pacsnode", "demo", "--viewer", "--workdir", str(tmp_path / "w"),
                           *args], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr.strip(), proc.stdout) == (2, message, "")
    assert not (tmp_path / "w").exists()  # refused before the demo started
