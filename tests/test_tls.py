"""DICOM TLS: a caller with a certificate from the CA gets in; one without does not."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, dcmtk, free_port
from test_serve import ENV, NodeProcess, make_series, wait_for, write_config

pytestmark = pytest.mark.network


@pytest.fixture
def tls_node(tmp_path: Path) -> Iterator[tuple[NodeProcess, Path]]:
    certs = tmp_path / "tls"
    subprocess.run(["bash", str(REPO / "deploy" / "tls" / "make-certs.sh"), str(certs)], check=True,
                   capture_output=True)
    port = free_port()
    tls = (f'enabled = true\ncert = "{certs / "node.crt"}"\nkey = "{certs / "node.key"}"\n'
           f'ca = "{certs / "ca.crt"}"\n')
    cfg = write_config(tmp_path, port, extra={r"enabled = false  ": tls + "#"})
    node = NodeProcess(cfg, port, tmp_path / "node.log").start()
    yield node, certs
    node.stop()


def _echo(port: int, *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("echoscu"), "-aet", "ECHOSCU", "-aec", "PACSNODE", *tls,
                           "127.0.0.1", str(port)], env=ENV, capture_output=True, text=True, timeout=60)


def test_tls_with_client_certificate_succeeds_without_fails(tls_node: tuple[NodeProcess, Path]) -> None:
    node, certs = tls_node
    ok = _echo(node.port, "+tls", str(certs / "client.key"), str(certs / "client.crt"),
               "+cf", str(certs / "ca.crt"))
    assert ok.returncode == 0, ok.stderr
    anonymous = _echo(node.port, "+tla", "+cf", str(certs / "ca.crt"))
    assert anonymous.returncode != 0
    plain = _echo(node.port)
    assert plain.returncode != 0
    assert "association released: calling AE 'ECHOSCU'" in node.log.read_text()


def test_c_store_over_tls_takes_the_gate_and_pynetdicoms_path(tls_node: tuple[NodeProcess, Path],
                                                             tmp_path: Path) -> None:
    # the gate does the TLS handshake and reads the A-ASSOCIATE-RQ; pynetdicom's data path stores
    node, certs = tls_node
    make_series(tmp_path / "ser", 3)
    out = subprocess.run([dcmtk("storescu"), "-aet", "STORESCU", "-aec", "PACSNODE", "+tls",
                          str(certs / "client.key"), str(certs / "client.crt"), "+cf", str(certs / "ca.crt"),
                          "+sd", "127.0.0.1", str(node.port), str(tmp_path / "ser")],
                         env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # the node logs the release after storescu has gone: poll the log, do not read it once
    wait_for(lambda: "association released: calling AE 'STORESCU' from 127.0.0.1" in node.log.read_text())
    assert "3 stored, 0 duplicate, 0 failed" in node.log.read_text()
