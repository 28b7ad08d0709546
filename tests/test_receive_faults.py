"""The receive stage under faults: a full disk (a real tmpfs), a write that fails after
Success, and bounded fuzzing of data sets and PDUs on both data paths. Invariants: every
Success is a readable file with its ledger row; every refusal leaves nothing; the node keeps
answering."""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import dcmtk, mounted_tmpfs
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification
from receive_node import ReceiveNode
from test_receive_gate import associate_rq

from pacsnode.receive.header import encode_file_meta
from pacsnode.receive.spool import Spool

pytestmark = pytest.mark.network

_ALLOWED = {0x0000, 0xA700, 0xA900, 0xC000, 0xC001, 0xC002, 0xC003, 0xC004}


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB tmpfs: real ENOSPC."""
    with mounted_tmpfs(tmp_path / "fs", "96m") as mnt:
        yield mnt


def _free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 2**20


def _ct(i: int, study: str, series: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = f"{series}.{i + 1}"
    ds.Rows = ds.Columns = 256
    ds.PixelData = np.random.default_rng(i).integers(0, 4000, (256, 256), dtype=np.uint16).tobytes()
    return ds


def _scu() -> AE:
    ae = AE(ae_title="SCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    return ae


def _storescu(port: int, files: list[Path]) -> list[int]:
    """C-STORE ``files`` in order with DCMTK; the status of each (0 or 0xA700; anything else fails)."""
    out = subprocess.run([dcmtk("storescu"), "-v", "--no-halt", "-aet", "SCU", "-aec", "PACSNODE", "127.0.0.1", str(port),
                          *map(str, files)], capture_output=True, text=True, timeout=300)
    said = re.findall(r"Received Store Response \((.+?)\)", out.stdout + out.stderr)
    assert len(said) == len(files), out.stdout + out.stderr
    codes = {"Success": 0x0000}
    return [codes.get(s, 0xA700 if "OutOfResources" in s.replace(" ", "") else -1) for s in said]


def test_full_disk_answers_a700_loses_nothing_and_carries_on(tmpfs: Path) -> None:
    node = ReceiveNode(tmpfs, fast=True, min_free_disk_mb=20)
    filler = tmpfs / "filler"
    try:
        time.sleep(1.0)  # the journal's spare segments are taken now, inside the rule
        reserve = tmpfs / "reserve"
        reserve.write_bytes(bytes(10 << 20))
        with filler.open("wb") as fh:
            fh.write(bytes(int((_free_mb(tmpfs) - 26) * 2**20)))  # ~6 MiB above the mark: ~45 instances
        study, series = "1.2.3.100", "1.2.3.100.1"
        sent = [_ct(i, study, series) for i in range(80)]
        files = []
        for i, ds in enumerate(sent):  # DCMTK's storescu sends them in order and goes on after a refusal
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            files.append(tmpfs.parent / f"ct{i:03d}.dcm")
            ds.save_as(files[-1])
        statuses = _storescu(node.port, files)
        ok = [ds for ds, st in zip(sent, statuses, strict=True) if st == 0]
        assert set(statuses) == {0x0000, 0xA700}
        assert statuses == sorted(statuses)  # Success until the mark, then Out of Resources
        assert _free_mb(tmpfs) >= 20 - 0.5  # the rule is hard: never below the mark
        spooled = sorted(node.spool.root.rglob("*.dcm"))
        assert node.ledger.instance_count() == len(spooled) == len(ok)
        assert {str(pydicom.dcmread(f).SOPInstanceUID) for f in spooled} == {ds.SOPInstanceUID for ds in ok}
        filler.unlink()  # space returns: the refused ones are accepted when resent
        reserve.unlink()
        assert set(_storescu(node.port, files)) == {0x0000}
        assert node.ledger.instance_count() == len(sent) == len(list(node.spool.root.rglob("*.dcm")))
    finally:
        node.close()


def test_a_write_that_fails_after_success_is_restored_when_space_returns(tmpfs: Path) -> None:
    restored: list[Path] = []
    spool = Spool(tmpfs / "state", journal=True, on_restored=restored.extend)
    spool.open()
    filler = tmpfs / "filler"
    try:
        path = spool.path_for("1.2", "1.2.3", "1.2.3.4")
        data = os.urandom(200_000)
        with filler.open("wb") as fh:  # fill the disk to the last block
            try:
                while True:
                    fh.write(bytes(1 << 20))
                    fh.flush()
            except OSError:
                pass
        size, finish = spool.write_behind(path, [data])  # durable in the preallocated journal
        with pytest.raises(OSError) as err:
            finish()
        assert err.value.errno == 28 and spool.restoring(path) and not path.exists()
        filler.unlink()
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert path.read_bytes() == data and size == len(data)
        assert restored == [path.resolve()] and not spool.restoring(path)
    finally:
        spool.close()


def _fuzzed(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    op = rng.randrange(5)
    if op == 0:  # flip bytes in the header region
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(min(len(data), 1200))] = rng.randrange(256)
    elif op == 1:
        del data[rng.randrange(len(data)):]
    elif op == 2:
        at = rng.randrange(min(len(data), 1200))
        data[at:at] = rng.randbytes(rng.randint(1, 12))
    elif op == 3:  # a length field made huge or odd
        at = rng.randrange(0, min(len(data), 1200) - 4)
        data[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x01\x00\x00\x00", b"\x00\x00\x10\x00"])
    else:
        del data[rng.randrange(len(data)) // 2:][:rng.randint(1, 64)]
    return bytes(data)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pynetdicom"])
def test_fuzzed_data_sets_get_a_status_and_success_means_readable(tmp_path: Path, fast: bool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes as they are
    node = ReceiveNode(tmp_path, fast=fast)
    rng = random.Random(20)
    src = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    raw = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    body = raw[144 + int.from_bytes(raw[140:144], "little"):]
    seen: dict[int, int] = {}
    try:
        assoc = _scu().associate("127.0.0.1", node.port, ae_title="PACSNODE", max_pdu=16384)
        for i in range(120):
            f = tmp_path / f"fuzz{i}.dcm"
            orig = str(src.SOPInstanceUID)
            head, _, last = orig.rpartition(".")
            uid = f"{head}.{10 ** (len(last) - 1) + i}"  # same length: the data set's layout is kept
            mutated = _fuzzed(rng, body.replace(orig.encode(), uid.encode()))
            f.write_bytes(encode_file_meta(MRImageStorage, uid, str(src.file_meta.TransferSyntaxUID)) + mutated)
            if not assoc.is_established:
                assoc = _scu().associate("127.0.0.1", node.port, ae_title="PACSNODE")
            rsp = assoc.send_c_store(f)
            if "Status" not in rsp:  # pynetdicom's SCU can lose a fast response to its own reactor: again
                assoc = _scu().associate("127.0.0.1", node.port, ae_title="PACSNODE", max_pdu=16384)
                rsp = assoc.send_c_store(f)
            status = int(rsp.Status) if "Status" in rsp else -1
            seen[status] = seen.get(status, 0) + 1
            assert status in _ALLOWED, f"case {i}: status 0x{status:04X}"
        assoc.release()
        for stored in node.spool.root.rglob("*.dcm"):  # every Success is a file pydicom reads whole
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(stored)
                for elem in ds.iterall():
                    _ = elem.value
        assert node.ledger.instance_count() == len(list(node.spool.root.rglob("*.dcm")))
        assert seen.get(0, 0) >= 1 and sum(v for k, v in seen.items() if k != 0) >= 30, seen
        echo = _scu().associate("127.0.0.1", node.port, ae_title="PACSNODE")
        assert echo.send_c_echo().Status == 0
        echo.release()
    finally:
        node.close()


def test_fuzzed_pdus_are_closed_and_the_node_carries_on(tmp_path: Path) -> None:
    node = ReceiveNode(tmp_path, fast=True, artim_timeout=1.0)
    rng = random.Random(96)
    good = associate_rq([1, 3])
    try:
        for i in range(96):
            pdu = bytearray(good if i % 3 else rng.randbytes(rng.randint(1, 200)))
            if i % 3:
                for _ in range(rng.randint(1, 4)):
                    pdu[rng.randrange(len(pdu))] = rng.randrange(256)
            with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
                s.sendall(bytes(pdu))
                s.settimeout(4)
                t0 = time.monotonic()
                try:
                    while s.recv(4096):
                        if time.monotonic() - t0 > 3:
                            break
                        s.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # whatever it said: abort
                except (TimeoutError, ConnectionResetError, BrokenPipeError):
                    pass
                assert time.monotonic() - t0 < 3.5, f"PDU {i}: the connection must end, not hang"
        echo = _scu().associate("127.0.0.1", node.port, ae_title="PACSNODE")
        assert echo.send_c_echo().Status == 0
        echo.release()
    finally:
        node.close()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pynetdicom"])
def test_an_mr_data_set_on_a_ct_context_gets_a900_and_leaves_nothing(tmp_path: Path, fast: bool,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    node = ReceiveNode(tmp_path, fast=fast)
    try:
        src = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
        raw = Path(get_testdata_file("MR_small.dcm")).read_bytes()
        body = raw[144 + int.from_bytes(raw[140:144], "little"):]
        f = tmp_path / "mr-as-ct.dcm"  # the file meta (and so the context and the request) say CT
        f.write_bytes(encode_file_meta(CTImageStorage, str(src.SOPInstanceUID), ExplicitVRLittleEndian) + body)
        assoc = _scu().associate("127.0.0.1", node.port, ae_title="PACSNODE")
        assert int(assoc.send_c_store(f).Status) == 0xA900
        assoc.release()
        assert node.ledger.instance_count() == 0 and not list(node.spool.root.rglob("*.dcm"))
    finally:
        node.close()
