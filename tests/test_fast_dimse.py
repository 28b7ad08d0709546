"""The fast C-STORE data phase (pacsnode.receive.fast_dimse) against pynetdicom peers (DCMTK storescu
sends through it in tests/test_serve.py and tests/test_tls.py):
fragmented messages, both paths storing the same bytes, C-ECHO, release and abort handed back
to pynetdicom, and the command set codec checked against pydicom."""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification
from receive_node import ReceiveNode as _Node

from pacsnode.receive import fast_dimse

pytestmark = pytest.mark.network


@pytest.fixture(params=[True, False], ids=["fast", "pynetdicom"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[_Node]:
    n = _Node(tmp_path, fast=request.param)
    yield n
    n.close()


def _scu(max_pdu: int = 16382) -> AE:
    ae = AE(ae_title="SCU")
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    return ae


def _ct(uid_suffix: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{uid_suffix}"
    return ds


def test_stores_echo_and_release(node: _Node) -> None:
    assoc = _scu().associate("127.0.0.1", node.port, ae_title="PACSNODE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    sent = [_ct(str(i)) for i in range(3)]
    for ds in sent:
        assert assoc.send_c_store(ds).Status == 0x0000
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert assoc.is_released
    for ds in sent:
        path = node.ledger.instance_path(ds.SOPInstanceUID)
        assert path is not None
        stored = pydicom.dcmread(path)
        assert stored.SOPInstanceUID == ds.SOPInstanceUID and stored.PixelData == ds.PixelData
        assert stored.file_meta.SourceApplicationEntityTitle.strip() == "SCU"
    assert node.recorded == [sent[0].SeriesInstanceUID] * 3


def test_a_data_set_fragmented_over_many_pdus_is_stored_byte_for_byte(tmp_path: Path) -> None:
    """max PDU 4096 at the node: the peer splits the 0.5 MB data set into ~130 PDVs."""
    node = _Node(tmp_path, fast=True, max_pdu=4096)
    try:
        ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        ds.PixelData = bytes(range(256)) * 2048  # 512 KiB
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 512, 512, 16, 16, 15
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        assoc = _scu().associate("127.0.0.1", node.port, ae_title="PACSNODE")
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        path = node.ledger.instance_path(ds.SOPInstanceUID)
        assert path is not None
        sent = encode(ds, False, True)  # the data set bytes pynetdicom put on the wire
        assert sent is not None and len(sent) > 512 * 1024
        assert path.read_bytes().endswith(sent)
        assert pydicom.dcmread(path).PixelData == ds.PixelData
        # the journal record (its data CRC computed PDU by PDU as they arrived) replays to the same file
        journal = node.spool.journal
        assert journal is not None and journal._active is not None
        seg = journal._active
        records = journal._records(seg.fd, seg.generation, journal.segment_bytes)
        assert records == [(str(path.relative_to(node.spool.root)), path.read_bytes())]
    finally:
        node.close()


def test_both_paths_answer_the_same_statuses(tmp_path: Path) -> None:
    results = {}
    for fast in (True, False):
        node = _Node(tmp_path / str(fast), fast=fast)
        try:
            assoc = _scu().associate("127.0.0.1", node.port, ae_title="PACSNODE")
            good = _ct("1")
            dup = assoc.send_c_store(good).Status, assoc.send_c_store(good).Status
            no_uid = _ct("2")
            del no_uid.StudyInstanceUID
            missing = assoc.send_c_store(no_uid).Status
            assoc.release()
            results[fast] = (dup, missing, node.ledger.instance_count())
        finally:
            node.close()
    assert results[True] == results[False] == ((0x0000, 0x0000), 0xC001, 1)


def test_peer_abort_mid_data_set_stores_nothing_and_the_node_carries_on(tmp_path: Path) -> None:
    node = _Node(tmp_path, fast=True)
    try:
        assoc = _scu().associate("127.0.0.1", node.port, ae_title="PACSNODE")
        assert assoc.is_established
        ds = _ct("91")
        cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == CTImageStorage
                  and c.transfer_syntax[0] == ExplicitVRLittleEndian)
        cmd = Dataset()
        cmd.AffectedSOPClassUID = CTImageStorage
        cmd.CommandField = 0x0001
        cmd.MessageID = 1
        cmd.Priority = 0
        cmd.CommandDataSetType = 0x0000
        cmd.AffectedSOPInstanceUID = ds.SOPInstanceUID
        body = encode(cmd, True, True)
        assert body is not None
        command = struct.pack("<HHII", 0, 0, 4, len(body)) + body
        data = encode(ds, False, True)
        assert data is not None

        def pdv(payload: bytes, control: int) -> bytes:
            item = struct.pack(">IBB", len(payload) + 2, cx.context_id, control) + payload
            return struct.pack(">BBI", 4, 0, len(item)) + item

        raw = assoc.dul.socket.socket
        raw.sendall(pdv(command, 0x03) + pdv(data[: len(data) // 2], 0x00))  # half a data set...
        raw.sendall(struct.pack(">BBIBBBB", 7, 0, 4, 0, 0, 0, 0))  # ...then A-ABORT
        deadline = time.time() + 10
        while node.scp.active() and time.time() < deadline:
            time.sleep(0.05)
        assert not node.scp.active()
        assoc.kill()
        assert node.ledger.instance_path(ds.SOPInstanceUID) is None
        assert not list(node.spool.root.rglob("*.dcm")) and not list(node.spool.root.rglob("*.part"))
        again = _scu().associate("127.0.0.1", node.port, ae_title="PACSNODE")
        assert again.send_c_store(_ct("92")).Status == 0x0000
        again.release()
    finally:
        node.close()


def test_a_command_it_does_not_serve_is_handed_to_pynetdicom_and_the_association_goes_on(
        tmp_path: Path) -> None:
    """A C-CANCEL-RQ (not a C-STORE or C-ECHO) arrives first: the fast path hands it, bytes
    and all, to pynetdicom, which serves the rest of the association (echo, store, release)."""
    node = _Node(tmp_path, fast=True)
    try:
        assoc = _scu().associate("127.0.0.1", node.port, ae_title="PACSNODE")
        cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == Verification)
        cmd = Dataset()
        cmd.CommandField = 0x0FFF
        cmd.MessageIDBeingRespondedTo = 99
        cmd.CommandDataSetType = 0x0101
        body = encode(cmd, True, True)
        assert body is not None
        command = struct.pack("<HHII", 0, 0, 4, len(body)) + body
        item = struct.pack(">IBB", len(command) + 2, cx.context_id, 0x03) + command
        assoc.dul.socket.socket.sendall(struct.pack(">BBI", 4, 0, len(item)) + item)
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(_ct("93")).Status == 0x0000
        assoc.release()
        assert assoc.is_released
        assert node.ledger.instance_path(_ct("93").SOPInstanceUID) is not None
    finally:
        node.close()


def test_command_set_codec_matches_pydicom() -> None:
    raw = fast_dimse.encode_response(0x8001, 7, 0xA700, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.45")
    ds = read_dataset(io.BytesIO(raw), True, True)
    assert ds.CommandGroupLength == len(raw) - 12
    assert (ds.CommandField, ds.MessageIDBeingRespondedTo, ds.Status) == (0x8001, 7, 0xA700)
    assert ds.AffectedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.AffectedSOPInstanceUID == "1.2.3.45"
    assert ds.CommandDataSetType == 0x0101
    fields = fast_dimse.parse_command(raw)
    assert fields[0x0120] == (7).to_bytes(2, "little") and fields[0x1000] == b"1.2.3.45"
    with pytest.raises(ValueError):
        fast_dimse.parse_command(raw[:-3])
