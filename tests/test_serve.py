"""`pacsnode serve` against real DCMTK peers: echo, store, policy, compressed data,
out-of-disk, garbage, SIGTERM, and kill -9 in the middle of a send."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import REPO, dcmtk, free_port
from onnx_models import make_card, threshold_model
from pydicom.data import get_testdata_file

from pacsnode.ledger import Ledger
from pacsnode.states import SeriesState

pytestmark = pytest.mark.network

ENV = {**os.environ, "TCP_NODELAY": "1"}
PACSNODE = [sys.executable, "-m", "pacsnode"]


def write_config(tmp: Path, port: int, *, stable: float = 1.5, extra: dict[str, str] | None = None,
                 tail: str = "") -> Path:
    """A test config made from the shipped config.toml with a few keys replaced: the route runs
    a tiny known-output model on MR series described "T1" and writes SEG + SR, sent nowhere."""
    model = tmp / "t1-threshold.onnx"
    threshold_model(model, make_card(channels=1, labels=1, patch_size=(16, 32, 32)), threshold=100.0)
    text = (REPO / "config.toml").read_text()
    subs = {
        r'file = "builtin:brain-tumor"': f'file = "{model}"',
        r'destinations = \["pacs"\]': "destinations = []",
        r'state_dir = "var/pacsnode"': f'state_dir = "{tmp / "state"}"',
        r"\nport = 11112": f"\nport = {port}",
        r"\nport = 8080": "\nport = 0",
        r"stable_seconds = 10 ": f"stable_seconds = {stable} ",
        r'group_by = "study"': 'group_by = "series"',
        **(extra or {}),
    }
    for pattern, repl in subs.items():
        text, n = re.subn(pattern, repl, text)
        assert n == 1, f"config.toml no longer has {pattern!r}"
    cfg = tmp / "node.toml"
    cfg.write_text(text + tail)
    return cfg


class NodeProcess:
    def __init__(self, cfg: Path, port: int, log: Path) -> None:
        self.cfg, self.port, self.log = cfg, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        self.proc = subprocess.Popen([*PACSNODE, "serve", "--config", str(self.cfg)], env=ENV,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        end = time.time() + 60
        while time.time() < end:
            assert self.proc.poll() is None, self.log.read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise AssertionError("node did not start listening")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def ledger(self) -> Ledger:
        return Ledger(self.cfg.parent / "state" / "ledger.sqlite")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    port = free_port()
    n = NodeProcess(write_config(tmp_path, port), port, tmp_path / "node.log").start()
    yield n
    n.stop()


def storescu(port: int, *paths: Path | str, aet: str = "STORESCU", aec: str = "PACSNODE",
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("storescu"), "-aet", aet, "-aec", aec, "+sd", "-nh", *extra,
                           "127.0.0.1", str(port), *map(str, paths)],
                          env=ENV, capture_output=True, text=True, timeout=300)


def make_series(out: Path, n: int, description: str = "T1") -> list[Path]:
    from distillation.phantoms.dicom import write_series

    arr = np.random.default_rng(n).normal(100, 20, (n, 64, 64)).clip(0).astype(np.float32)
    return write_series(arr, np.eye(4), out, modality="MR", series_description=description)


def wait_for(pred, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while not pred():
        assert time.time() < end, "condition not reached in time"
        time.sleep(0.1)


def test_echoscu_and_storescu_then_series_completes(node: NodeProcess, tmp_path: Path) -> None:
    echo = subprocess.run([dcmtk("echoscu"), "-aet", "ECHOSCU", "-aec", "PACSNODE", "127.0.0.1",
                           str(node.port)], env=ENV, capture_output=True, text=True, timeout=60)
    assert echo.returncode == 0, echo.stderr
    files = make_series(tmp_path / "ser", 12)
    out = storescu(node.port, tmp_path / "ser")
    assert out.returncode == 0, out.stderr
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    ledger = node.ledger()
    try:
        wait_for(lambda: ledger.unit(series_uid).state is SeriesState.DONE)  # routed (MR), job ran
        assert ledger.unit(series_uid).instance_count == 12
        stored = ledger.instance_paths(series_uid)
        assert len(stored) == 12
        # stored as received: same data set bytes after the file meta
        got = pydicom.dcmread(stored[0])
        sent = pydicom.dcmread(next(f for f in files if pydicom.dcmread(f).SOPInstanceUID == got.SOPInstanceUID))
        assert got.PixelData == sent.PixelData
    finally:
        ledger.close()
    assert "association released: calling AE 'STORESCU'" in node.log.read_text()
    # the status command reads the same ledger
    st = subprocess.run([*PACSNODE, "status", "--config", str(node.cfg)], capture_output=True, text=True)
    assert st.returncode == 0 and series_uid in st.stdout and "done" in st.stdout


def test_unknown_calling_ae_and_wrong_called_ae_are_rejected(node: NodeProcess) -> None:
    bad_calling = subprocess.run([dcmtk("echoscu"), "-aet", "INTRUDER", "-aec", "PACSNODE",
                                  "127.0.0.1", str(node.port)], env=ENV, capture_output=True, text=True)
    assert bad_calling.returncode != 0
    assert "Calling AE Title Not Recognized" in bad_calling.stderr + bad_calling.stdout
    bad_called = subprocess.run([dcmtk("echoscu"), "-aet", "ECHOSCU", "-aec", "SOMEONE",
                                 "127.0.0.1", str(node.port)], env=ENV, capture_output=True, text=True)
    assert bad_called.returncode != 0
    assert "Called AE Title Not Recognized" in bad_called.stderr + bad_called.stdout
    assert node.log.read_text().count("association rejected") == 2


PROPOSE = {
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.1.99": "-xd",
}

COMPRESSED = [
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "JPEG-lossy.dcm",  # JPEG extended
    "JPEGLSNearLossless_16.dcm",  # JPEG-LS near-lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "693_J2KI.dcm",  # JPEG 2000
    "MR_small_RLE.dcm",  # RLE lossless
    "image_dfl.dcm",  # deflated explicit VR LE
]


def test_compressed_transfer_syntaxes_are_accepted(node: NodeProcess, tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    from distillation.phantoms.dicom import write_series

    paths = []
    for name in COMPRESSED:  # pydicom's files share UIDs or lack them: give each its own
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = ds.get("StudyInstanceUID") or generate_uid()
        ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or generate_uid()
        paths.append(tmp_path / name)
        ds.save_as(paths[-1], enforce_file_format=True)
    arr = np.random.default_rng(1).integers(0, 500, (2, 32, 32)).astype(np.float32)
    paths += write_series(arr, np.eye(4), tmp_path / "jls", modality="MR", series_description="T2",
                          transfer_syntax="jpegls")
    for p in paths:  # storescu proposes a compressed syntax only when told which
        ts = pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
        out = storescu(node.port, p, extra=(PROPOSE[ts], "-v"))
        assert "Received Store Response (Success)" in out.stderr + out.stdout, out.stderr
    ledger = node.ledger()
    try:
        for p in paths:
            uid = str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            stored = ledger.instance_path(uid)
            assert stored is not None, p.name
            meta = pydicom.dcmread(stored, stop_before_pixels=True).file_meta
            assert meta.TransferSyntaxUID == pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
    finally:
        ledger.close()


def test_send_cli_and_duplicates_not_stored_twice(node: NodeProcess, tmp_path: Path) -> None:
    make_series(tmp_path / "ser", 5)
    for _ in range(2):
        out = subprocess.run([*PACSNODE, "send", str(tmp_path / "ser"), "--to", f"127.0.0.1:{node.port}"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "5  0x0000 Success" in out.stdout
    ledger = node.ledger()
    try:
        assert ledger.instance_count() == 5
        assert len(list((tmp_path / "state" / "spool").glob("*/*/*.dcm"))) == 5
    finally:
        ledger.close()
    echo = subprocess.run([*PACSNODE, "echo", "127.0.0.1", str(node.port)], capture_output=True, text=True)
    assert echo.returncode == 0 and "status 0x0000" in echo.stdout


def test_out_of_disk_mark_answers_a700(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, port, extra={r"min_free_disk_mb = 1024": "min_free_disk_mb = 1000000000"})
    n = NodeProcess(cfg, port, tmp_path / "node.log").start()
    try:
        make_series(tmp_path / "ser", 2)
        out = storescu(port, tmp_path / "ser", extra=("-v",))
        said = (out.stderr + out.stdout).lower().replace(" ", "")
        assert "outofresources" in said or "a700" in said, out.stderr
        assert "free disk space must stay at least node.min_free_disk_mb = 1e+09 MiB after writing" in n.log.read_text()
        assert not list((tmp_path / "state" / "spool").glob("*/*/*"))
    finally:
        n.stop()


def test_garbage_data_set_gets_c0xx_and_leaves_nothing(node: NodeProcess, tmp_path: Path) -> None:
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import MRImageStorage

    good = make_series(tmp_path / "ser", 1)[0]
    raw = good.read_bytes()
    meta_len = 144 + int.from_bytes(raw[140:144], "little")
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(raw[:meta_len] + b"\x08\x00\x18\x00UI\xff\xff" + os.urandom(300))
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="PACSNODE-CLI")
        ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", node.port, ae_title="PACSNODE")
        assert assoc.is_established
        status = assoc.send_c_store(str(garbage))
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assert 0xC000 <= status.Status <= 0xC0FF
    assert not list((tmp_path / "state" / "spool").glob("*/*/*"))
    ledger = node.ledger()
    try:
        assert ledger.instance_count() == 0
    finally:
        ledger.close()


def test_sigterm_lets_the_node_stop_cleanly(node: NodeProcess) -> None:
    assert node.stop() == 0
    log = node.log.read_text()
    assert "signal SIGTERM received" in log and "stopped" in log
    assert "Traceback" not in log


def test_kill_9_mid_send_then_resend_loses_nothing_and_completes_once(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, port, stable=6.0)
    log = tmp_path / "node.log"
    files = make_series(tmp_path / "ser", 200)
    node = NodeProcess(cfg, port, log).start()
    # -v makes storescu report each instance's status; read them while it sends
    scu = subprocess.Popen([dcmtk("storescu"), "-v", "-aet", "STORESCU", "-aec", "PACSNODE", "+sd",
                            "127.0.0.1", str(port), str(tmp_path / "ser")],
                           env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    acked = 0
    assert scu.stdout is not None
    for line in scu.stdout:
        if "Received Store Response (Success)" in line:
            acked += 1
            if acked == 60:
                os.kill(node.proc.pid, signal.SIGKILL)
                break
    rest = scu.communicate(timeout=120)[0]
    acked += rest.count("Received Store Response (Success)")
    node.proc.wait()
    assert 60 <= acked < 200
    node = NodeProcess(cfg, port, log).start()
    try:
        out = storescu(port, tmp_path / "ser")
        assert out.returncode == 0, out.stderr
        series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        ledger = node.ledger()
        try:
            wait_for(lambda: ledger.unit(series_uid).state is SeriesState.DONE, timeout=60)
            unit = ledger.unit(series_uid)
            assert unit.instance_count == 200 and unit.generation == 1  # completed once
            assert len(ledger.jobs()) == 1 and ledger.jobs()[0].attempts == 1
            on_disk = sorted(p.name for p in (tmp_path / "state" / "spool").glob("*/*/*"))
            assert len(on_disk) == 200 == len(set(on_disk))  # each exactly once, no partials
            assert ledger.instance_count() == 200
        finally:
            ledger.close()
    finally:
        node.stop()
    assert log.read_text().count("complete (generation 1") == 1
