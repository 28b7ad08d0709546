"""The node's STOW-RS endpoint (pacsnode.receive.stow) with dicomweb-client and raw HTTP:
authenticated callers store through the same validation, spool and ledger as C-STORE;
unauthenticated or malformed requests get their HTTP status and store nothing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from receive_node import ReceiveNode

from pacsnode.receive.stow import Credentials, StowServer

pytestmark = pytest.mark.network


class _Stow:
    def __init__(self, tmp: Path) -> None:
        self.node = ReceiveNode(tmp, fast=True)
        users = tmp / "users"
        users.write_text(f"radiology:{hashlib.sha256(b'pw').hexdigest()}\n")
        tokens = tmp / "tokens"
        tokens.write_text("t0ken\n")
        self.server = StowServer("127.0.0.1", 0, "/dicom-web", Credentials(users, tokens), self.node.receiver.store)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.port}/dicom-web"

    def close(self) -> None:
        self.server.stop()
        self.node.close()


@pytest.fixture
def stow(tmp_path: Path) -> Iterator[_Stow]:
    s = _Stow(tmp_path)
    yield s
    s.close()


def _client(url: str, auth: tuple[str, str] | None = None, token: str | None = None) -> DICOMwebClient:
    session = requests.Session()
    if auth:
        session.auth = auth
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return DICOMwebClient(url=url, session=session)


def _ct(i: int) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ds.SOPInstanceUID}.{i + 1}"
    return ds


def _multipart(parts: list[bytes], kind: str = "application/dicom") -> tuple[bytes, str]:
    body = b"".join(b"--XX\r\nContent-Type: " + kind.encode() + b"\r\n\r\n" + p + b"\r\n" for p in parts) + b"--XX--\r\n"
    return body, f'multipart/related; type="{kind}"; boundary=XX'


def _file(ds: pydicom.Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_authenticated_stow_rs_stores_like_c_store(stow: _Stow) -> None:
    sent = [_ct(i) for i in range(3)]
    answer = _client(stow.url, auth=("radiology", "pw")).store_instances(sent)
    assert [str(r.ReferencedSOPInstanceUID) for r in answer.ReferencedSOPSequence] == [d.SOPInstanceUID for d in sent]
    answer = _client(stow.url, token="t0ken").store_instances([_ct(3)])
    assert len(answer.ReferencedSOPSequence) == 1
    assert stow.node.ledger.instance_count() == 4 == len(list(stow.node.spool.root.rglob("*.dcm")))
    for f in stow.node.spool.root.rglob("*.dcm"):
        assert pydicom.dcmread(f).file_meta.SourceApplicationEntityTitle.startswith("STOW-RS")


@pytest.mark.parametrize("headers, code, message", [
    ({}, 401, "STOW-RS needs credentials (basic or bearer), got none that are valid"),
    ({"Authorization": "Bearer nope"}, 401, "got none that are valid"),
    ({"Authorization": "Basic cmFkaW9sb2d5Ondyb25n"}, 401, "got none that are valid"),  # radiology:wrong
])
def test_unauthenticated_requests_store_nothing(stow: _Stow, headers: dict, code: int, message: str) -> None:
    body, ctype = _multipart([_file(_ct(0))])
    r = requests.post(stow.url + "/studies", data=body, headers={"Content-Type": ctype, **headers}, timeout=10)
    assert r.status_code == code and message in r.text and "Basic" in r.headers["WWW-Authenticate"]
    assert stow.node.ledger.instance_count() == 0


@pytest.mark.parametrize("make, code, message", [
    (lambda f: (f, "application/dicom"), 415, "the body must be multipart/related, got application/dicom"),
    (lambda f: _multipart([f], kind="application/json"), 415, "the parts must be application/dicom, got application/json"),
    (lambda f: (b"--XX\r\n\r\n" + f, 'multipart/related; type="application/dicom"; boundary=XX'), 400,
     "must hold parts and end with its closing boundary"),
    (lambda f: (f, 'multipart/related; type="application/dicom"'), 400, "needs a boundary parameter"),
])
def test_malformed_requests_get_their_status_and_store_nothing(stow: _Stow, make, code: int, message: str) -> None:
    body, ctype = make(_file(_ct(0)))
    r = requests.post(stow.url + "/studies", data=body, headers={"Content-Type": ctype},
                      auth=("radiology", "pw"), timeout=10)
    assert r.status_code == code and message in r.text
    assert stow.node.ledger.instance_count() == 0 and not list(stow.node.spool.root.rglob("*.dcm"))


def test_each_part_gets_the_c_store_status_it_would_have_got(stow: _Stow) -> None:
    good, bad, other_study = _ct(0), _file(_ct(1)), _ct(2)
    other_study.StudyInstanceUID = "1.2.3.99"
    truncated = bad[:len(bad) - 5000]
    body, ctype = _multipart([_file(good), truncated, b"not dicom", _file(other_study)])
    r = requests.post(f"{stow.url}/studies/{good.StudyInstanceUID}", data=body, headers={"Content-Type": ctype},
                      auth=("radiology", "pw"), timeout=10)
    assert r.status_code == 202  # some stored, some refused
    answer = pydicom.Dataset.from_json(json.loads(r.text))
    assert [str(x.ReferencedSOPInstanceUID) for x in answer.ReferencedSOPSequence] == [good.SOPInstanceUID]
    assert [int(x.FailureReason) for x in answer.FailedSOPSequence] == [0xC000, 0xC000, 0xA900]
    assert stow.node.ledger.instance_count() == 1
    r = requests.post(stow.url + "/studies", data=_multipart([truncated])[0], headers={"Content-Type": ctype},
                      auth=("radiology", "pw"), timeout=10)
    assert r.status_code == 409  # none stored


def test_the_endpoint_takes_authenticated_callers_only() -> None:
    from pacsnode.config import parse_settings
    from pacsnode.errors import ConfigError

    with pytest.raises(ConfigError, match=r"dicomweb.users_file or dicomweb.tokens_file is required when "
                                          r"dicomweb.port is set \(STOW-RS takes authenticated callers only\)"):
        parse_settings({"security": {"allow_any_caller": True}, "dicomweb": {"port": 8042}})


def test_the_node_serves_stow_rs_when_configured(tmp_path: Path) -> None:
    from pacsnode.config import load_settings
    from pacsnode.demo.scenario import free_port, write_node_config
    from pacsnode.node import Node

    config = write_node_config(tmp_path / "node.toml", state_dir=tmp_path / "state", port=free_port(),
                               model_file="builtin:brain-tumor", destination=None)
    tokens = tmp_path / "tokens"
    tokens.write_text("t0ken\n")
    web_port = free_port()
    text = config.read_text()
    assert '[dicomweb]\nport = 0\n' in text  # the shipped section, off
    config.write_text(text.replace('[dicomweb]\nport = 0\n', f'[dicomweb]\nport = {web_port}\ntokens_file = "{tokens}"\n'))
    node = Node(load_settings(config))
    node.start()
    try:
        answer = _client(f"http://127.0.0.1:{web_port}/dicom-web", token="t0ken").store_instances([_ct(7)])
        assert len(answer.ReferencedSOPSequence) == 1
        assert node.ledger.instance_count() == 1
    finally:
        node.stop(grace=5)
