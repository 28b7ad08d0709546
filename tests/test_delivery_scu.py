"""send_datasets against real peers: DCMTK storescp (plain and TLS) and a refusing pynetdicom SCP."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import dcmtk, free_port
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import SegmentationStorage
from test_results_support import BRAIN_CARD, SHA, SPACING, make_labels, make_series

from pacsnode.config import Destination
from pacsnode.delivery import send_datasets
from pacsnode.errors import DeliveryError
from pacsnode.results import write_seg, write_sr

pytestmark = pytest.mark.network

OPENSSL = "/usr/bin/openssl"


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"storescp exited early: {proc.stderr.read() if proc.stderr else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"storescp did not listen on {port}")


def _storescp(port: int, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TCP_NODELAY": "1"}
    cmd = [dcmtk("storescp"), "-aet", "PACS", "-od", str(out), "+xa", "-pm", "+B", *extra, str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_listening(port, proc)
    return proc


@pytest.fixture
def results() -> list:
    src = make_series()
    labels = make_labels()
    seg = write_seg(src, labels, BRAIN_CARD, model_sha256=SHA)
    sr = write_sr(seg, labels, BRAIN_CARD, src, model_sha256=SHA, spacing=SPACING)
    return [seg, sr]


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, out = free_port(), tmp_path / "pacs"
    out.mkdir()
    proc = _storescp(port, out)
    yield port, out
    proc.terminate()
    proc.wait(timeout=10)


def _encoded(ds, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _assert_arrived(out: Path, sent: list) -> None:
    """storescp +B keeps the data set bytes as received: they must equal what we encode."""
    received = {}
    for p in out.iterdir():
        meta = dcmread(p, stop_before_pixels=True)
        raw = p.read_bytes()
        body = raw[132 + 12 + int(meta.file_meta.FileMetaInformationGroupLength):]
        received[meta.SOPInstanceUID] = (meta.file_meta.TransferSyntaxUID, body)
    assert set(received) == {ds.SOPInstanceUID for ds in sent}
    for ds in sent:
        ts, body = received[ds.SOPInstanceUID]
        assert body == _encoded(ds, implicit=ts == ImplicitVRLittleEndian)


def test_seg_and_sr_arrive_byte_complete(storescp: tuple[int, Path], results: list) -> None:
    port, out = storescp
    dest = Destination(ae_title="PACS", host="127.0.0.1", port=port)
    outcomes = send_datasets(dest, results, "PACSNODE", timeout=10)
    assert [o.status for o in outcomes] == [0, 0]
    assert all(o.stored for o in outcomes)
    _assert_arrived(out, results)


def test_files_are_sent_too(storescp: tuple[int, Path], results: list, tmp_path: Path) -> None:
    port, out = storescp
    paths = []
    for ds in results:
        p = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    outcomes = send_datasets(Destination(ae_title="PACS", host="127.0.0.1", port=port), paths, "PACSNODE")
    assert len(outcomes) == 2
    _assert_arrived(out, results)


def test_absent_peer_is_a_delivery_error_with_the_reason(results: list) -> None:
    dest = Destination(ae_title="PACS", host="127.0.0.1", port=free_port())
    with pytest.raises(DeliveryError, match=r"PACS@127\.0\.0\.1:\d+ needs an association, got none: connection refused"):
        send_datasets(dest, results, "PACSNODE", timeout=5)


def test_refused_association_names_the_rejection(tmp_path: Path, results: list) -> None:
    port = free_port()
    proc = _storescp(port, tmp_path, "--refuse")
    try:
        dest = Destination(ae_title="PACS", host="127.0.0.1", port=port)
        with pytest.raises(DeliveryError, match=r"needs an association, got none: association rejected \(.*\): "):
            send_datasets(dest, results, "PACSNODE", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_failure_status_is_a_delivery_error(results: list) -> None:
    def refuse(event):  # a real SCP that answers Out of Resources
        return 0xA700

    ae = AE(ae_title="FULL")
    ae.add_supported_context(SegmentationStorage)
    ae.add_supported_context(results[1].SOPClassUID)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, refuse)])
    try:
        dest = Destination(ae_title="FULL", host="127.0.0.1", port=port)
        with pytest.raises(DeliveryError, match=r"2 of 2 refused: .* 0xA700") as info:
            send_datasets(dest, results, "PACSNODE", timeout=5)
        assert [o.status for o in info.value.outcomes] == [0xA700, 0xA700]
    finally:
        server.shutdown()


def test_peer_timeout_is_a_delivery_error(tmp_path: Path, results: list) -> None:
    port = free_port()
    proc = _storescp(port, tmp_path, "--sleep-during", "4")
    try:
        dest = Destination(ae_title="PACS", host="127.0.0.1", port=port)
        with pytest.raises(DeliveryError, match=r"got no response"):
            send_datasets(dest, results[:1], "PACSNODE", timeout=1)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all made here."""
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=test CA", cwd=d)
    for name, cn, ext in (
        ("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "PACSNODE", "extendedKeyUsage=clientAuth"),
    ):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d


def test_tls_send_with_mutual_authentication(tmp_path: Path, pki: Path, results: list) -> None:
    port, out = free_port(), tmp_path / "tls-pacs"
    out.mkdir()
    proc = _storescp(port, out, "+tls", str(pki / "server.key"), str(pki / "server.crt"),
                     "+cf", str(pki / "ca.crt"), "--require-peer-cert")
    try:
        dest = Destination(ae_title="PACS", host="127.0.0.1", port=port, tls=True,
                           tls_ca=pki / "ca.crt", tls_cert=pki / "client.crt", tls_key=pki / "client.key")
        outcomes = send_datasets(dest, results, "PACSNODE", timeout=10)
        assert all(o.stored for o in outcomes)
        _assert_arrived(out, results)

        untrusted = Destination(ae_title="PACS", host="127.0.0.1", port=port, tls=True,
                                tls_ca=pki / "client.crt")  # not the CA that signed the server
        with pytest.raises(DeliveryError, match=r"\(TLS\) needs an association, got none"):
            send_datasets(untrusted, results, "PACSNODE", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
