"""The gate before pynetdicom (pacsnode.receive.gate) against raw sockets and real SCUs:
trickling sockets closed at the ARTIM deadline, floods that never lock out a listed
caller, malformed A-ASSOCIATE-RQs aborted and closed at once."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from receive_node import ReceiveNode

from pacsnode.receive.gate import MalformedPdu, NoPresentationContext, check_associate_rq

pytestmark = pytest.mark.network


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def associate_rq(context_ids: list[int], calling: bytes = b"SCU", *, user_info: bool = True) -> bytes:
    """An A-ASSOCIATE-RQ PDU built by hand (so it can be built wrong)."""
    contexts = b"".join(
        _item(0x20, bytes((cid, 0, 0, 0)) + _item(0x30, CTImageStorage.encode())
              + _item(0x40, ExplicitVRLittleEndian.encode()))
        for cid in context_ids)
    ui = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4")) if user_info else b""
    body = (struct.pack(">HH", 1, 0) + b"PACSNODE".ljust(16) + calling.ljust(16) + bytes(32)
            + _item(0x10, b"1.2.840.10008.3.1.1.1") + contexts + ui)
    return struct.pack(">BBI", 1, 0, len(body)) + body


@pytest.mark.parametrize("pdu, error, message", [
    (associate_rq([1, 3]), None, ""),
    (associate_rq([]), NoPresentationContext, "must propose at least one presentation context, got none"),
    (associate_rq([2]), MalformedPdu, "must be odd, from 1 to 255 and unique, got 2"),
    (associate_rq([0]), MalformedPdu, "must be odd, from 1 to 255 and unique, got 0"),
    (associate_rq([1, 1]), MalformedPdu, "got 1 twice"),
    (associate_rq([1], user_info=False), MalformedPdu, "one Application Context and one User Information item, got 1 and 0"),
    (associate_rq([1])[:-3], MalformedPdu, "must be at least 68 bytes as its header says"),
    (b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00", MalformedPdu, "got A-ABORT (0x07)"),
    (b"GET / HTTP/1.1\r\n\r\n", MalformedPdu, "got unknown type (0x47)"),
])
def test_associate_rq_structure(pdu: bytes, error: type[Exception] | None, message: str) -> None:
    if error is None:
        check_associate_rq(pdu)
        return
    with pytest.raises(error) as exc:
        check_associate_rq(pdu)
    assert message in str(exc.value)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ReceiveNode]:
    n = ReceiveNode(tmp_path, fast=True, callers=("127.0.0.1/32",), artim_timeout=1.0,
                    max_associations=2, max_pending_connections=4, max_pending_per_address=2)
    yield n
    n.close()


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until EOF; (closed by the deadline, what the node sent)."""
    sock.settimeout(seconds)
    got = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                return True, got
            got += chunk
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        return True, got
    return False, got


def _store_one(port: int, source: str = "127.0.0.1") -> int:
    ae = AE(ae_title="SCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE", bind_address=(source, 0))
    assert assoc.is_established, "a listed caller must get an association"
    try:
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def test_trickling_sockets_are_closed_at_the_artim_deadline(node: ReceiveNode) -> None:
    socks = [_connect(node.port) for _ in range(2)]  # the per-address cap from 127.0.0.1
    stop = threading.Event()

    def trickle() -> None:
        rq = associate_rq([1])
        for i in range(len(rq)):
            if stop.is_set():
                return
            for s in socks:
                try:
                    s.send(rq[i:i + 1])
                except OSError:
                    pass
            time.sleep(0.2)

    t0 = time.monotonic()
    threading.Thread(target=trickle, daemon=True).start()
    try:
        for s in socks:
            closed, _ = _closed_within(s, 4.0)
            assert closed, "a trickling connection must be closed by node.artim_timeout"
        assert time.monotonic() - t0 < 3.0  # ARTIM 1 s, however the bytes trickle
        assert node.receiver.metrics.snapshot()["counters"]["artim_expired_total"] == 2
    finally:
        stop.set()
        for s in socks:
            s.close()


def test_a_flood_does_not_lock_out_a_listed_caller(node: ReceiveNode) -> None:
    # unlisted addresses fill their pool (4) and each its per-address cap (2); more are closed at once
    flood = [_connect(node.port, f"127.0.0.{3 + i // 2}") for i in range(8)]
    try:
        time.sleep(0.2)
        extra = _connect(node.port, "127.0.0.9")
        closed, _ = _closed_within(extra, 2.0)
        assert closed, "over the unlisted pool's cap a connection must be closed at once"
        assert node.scp.gate.pending() <= 4
        # the listed caller, twice (max_associations = 2 counts associations, not silent sockets)
        assert _store_one(node.port) == 0x0000
        assert _store_one(node.port) == 0x0000
    finally:
        for s in flood:
            s.close()


@pytest.mark.parametrize("pdu, answer", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x07"),
    (associate_rq([2]), b"\x07"),
    (associate_rq([0, 1]), b"\x07"),
    (associate_rq([]), b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x01"),
    (associate_rq([1]), b"\x02"),  # well formed: pynetdicom answers A-ASSOCIATE-AC from the pushed-back bytes
])
def test_malformed_requests_are_answered_and_closed_at_once(node: ReceiveNode, pdu: bytes, answer: bytes) -> None:
    s = _connect(node.port)
    try:
        s.sendall(pdu)
        if answer == b"\x02":
            s.settimeout(5)
            assert s.recv(1) == answer
            return
        t0 = time.monotonic()
        closed, got = _closed_within(s, 3.0)
        assert closed and time.monotonic() - t0 < 1.0, "the socket must be closed at once"
        assert got.startswith(answer)
    finally:
        s.close()
    assert _store_one(node.port) == 0x0000  # and the node carries on
