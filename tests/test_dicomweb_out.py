"""STOW-RS destinations against Orthanc's DICOMweb plugin (Debian's orthanc-dicomweb): a
result stored, then found by QIDO-RS and retrieved by WADO-RS; bad credentials refused
without marking the destination down; and, through the node's own outbox, a DICOMweb PACS
that is down at first gets the result once when it answers (the same policy as C-STORE)."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from outbox import queue_result
from pydicom.data import get_testdata_file

from pacsnode.config import Destination, load_settings
from pacsnode.delivery.send import probe_destination, send_results
from pacsnode.demo.orthanc import OrthancServer
from pacsnode.demo.scenario import free_port, wait_for, write_node_config
from pacsnode.errors import DeliveryError
from pacsnode.node import Node
from pacsnode.states import DeliveryState, DestinationState

pytestmark = pytest.mark.network

USERS = {"pacsnode": "s3cret"}


def _orthanc(tmp: Path, http_port: int | None = None) -> OrthancServer:
    return OrthancServer(tmp / "orthanc", free_port(), http_port or free_port(), dicomweb=True, users=USERS)


def _dest(tmp: Path, http_port: int, password: str = "s3cret") -> Destination:
    secret = tmp / f"password-{password}"
    secret.write_text(password + "\n")
    return Destination(kind="dicomweb", url=f"http://127.0.0.1:{http_port}/dicom-web", username="pacsnode",
                       password_file=secret)


def test_stow_rs_stores_and_qido_wado_find_it(tmp_path: Path) -> None:
    result = tmp_path / "seg.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), result)
    ds = pydicom.dcmread(result)
    with _orthanc(tmp_path) as orthanc:
        dest = _dest(tmp_path, orthanc.http_port)
        (outcome,) = send_results(dest, [result], "PACSNODE", timeout=30)
        assert outcome.stored and outcome.sop_instance_uid == ds.SOPInstanceUID
        session = requests.Session()
        session.auth = ("pacsnode", "s3cret")
        client = DICOMwebClient(url=dest.url, session=session)
        found = client.search_for_instances(search_filters={"SOPInstanceUID": ds.SOPInstanceUID})
        assert [f["00080018"]["Value"][0] for f in found] == [ds.SOPInstanceUID]
        back = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert back.SOPInstanceUID == ds.SOPInstanceUID and back.PixelData == ds.PixelData

        wrong = _dest(tmp_path, orthanc.http_port, password="wrong")
        with pytest.raises(DeliveryError) as err:
            send_results(wrong, [result], "PACSNODE", timeout=30)
        assert str(err.value) == (f"STOW-RS to {wrong.url} must be accepted, got HTTP 401 "
                                  f"(check username/password_file or token_file)")
        assert not getattr(err.value, "unreachable", False)  # it answers: not down
        probe_destination(wrong, "PACSNODE", timeout=10)  # reachable all the same
    with pytest.raises(DeliveryError) as err:  # Orthanc stopped: down
        send_results(dest, [result], "PACSNODE", timeout=5)
    assert getattr(err.value, "unreachable", False)
    assert str(err.value).startswith(f"STOW-RS to {dest.url} needs a connection, got ConnectionError")


def test_a_dicomweb_pacs_down_at_first_gets_the_result_once(tmp_path: Path) -> None:
    http_port = free_port()
    config = write_node_config(
        tmp_path / "node.toml", state_dir=tmp_path / "state", port=free_port(), model_file="builtin:none",
        destination=("ORTHANC", "127.0.0.1", 1), delivery={"backoff_seconds": 0.5, "probe_seconds": 0.5})
    doc = config.read_text()
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    stow = (f'[destinations.pacs]\nkind = "dicomweb"\nurl = "http://127.0.0.1:{http_port}/dicom-web"\n'
            f'username = "pacsnode"\npassword_file = "{secret}"\n')
    head, _, tail = doc.partition("[destinations.pacs]")
    tail = tail[tail.index("\n["):] if "\n[" in tail else ""
    config.write_text(head + stow + tail)
    assert tomllib.loads(config.read_text())["destinations"]["pacs"]["kind"] == "dicomweb"
    result = tmp_path / "result.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), result)
    node = Node(load_settings(config))
    node.start()
    try:
        ledger = node.ledger
        delivery = ledger.delivery(queue_result(node, result))
        wait_for(lambda: (d := ledger.destination("pacs")) is not None and d.state is DestinationState.DOWN,
                 30, "the DICOMweb destination marked down")
        assert ledger.delivery(delivery.id).state is DeliveryState.PENDING
        with _orthanc(tmp_path, http_port) as orthanc:
            wait_for(lambda: ledger.delivery(delivery.id).state is DeliveryState.SENT, 120, "the STOW-RS")
            assert len(orthanc.get("/instances")) == 1
            assert ledger.destination("pacs").state is DestinationState.UP
    finally:
        node.stop(grace=5)
