"""A real audit repository for tests: rsyslog (apt), started with its own config, unprivileged
ports on loopback, UDP (imudp) and TLS (imtcp + gtls, RFC 5425 octet counting) inputs, each
written raw, one message per line, to its own file. ``auth_mode="x509/certvalid"`` makes the
TLS input require a client certificate signed by the CA (mutual TLS, as ATNA asks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, free_port

RSYSLOGD = Path("/usr/sbin/rsyslogd")


def tls_material(out: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 (deploy/tls/make-certs.sh)."""
    if not (out / "ca.crt").exists():
        subprocess.run(["bash", str(REPO / "deploy" / "tls" / "make-certs.sh"), str(out)], check=True,
                       capture_output=True)
    return out


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rsyslog:
    """``start()`` / ``stop()`` an rsyslogd; ``messages(kind)`` what it wrote for "udp" or "tls"."""

    def __init__(self, workdir: Path, tls: Path, auth_mode: str = "anon") -> None:
        if not RSYSLOGD.exists():
            pytest.fail(f"rsyslog is missing at {RSYSLOGD}: run scripts/setup.sh (make test does)")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.udp_port = udp_port()
        self.tls_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        d = self.dir
        (d / "rsyslog.conf").write_text(f"""
global(workDirectory="{d}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{tls}/ca.crt"
       defaultNetstreamDriverCertFile="{tls}/node.crt"
       defaultNetstreamDriverKeyFile="{tls}/node.key")
module(load="imudp")
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="udp") {{ action(type="omfile" file="{d}/udp.log" template="raw") }}
ruleset(name="tls") {{ action(type="omfile" file="{d}/tls.log" template="raw") }}
input(type="imudp" address="127.0.0.1" port="{self.udp_port}" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="{self.tls_port}" ruleset="tls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="{auth_mode}")
""")

    def start(self) -> None:
        self.proc = subprocess.Popen([str(RSYSLOGD), "-n", "-f", str(self.dir / "rsyslog.conf"),
                                      "-i", str(self.dir / "rsyslogd.pid")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"rsyslogd exited: {self.proc.stdout.read().decode(errors='replace') if self.proc.stdout else ''}")
            try:
                socket.create_connection(("127.0.0.1", self.tls_port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        pytest.fail("rsyslogd did not listen within 15 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        self.proc = None

    def messages(self, kind: str) -> list[bytes]:
        path = self.dir / f"{kind}.log"
        return path.read_bytes().splitlines() if path.exists() else []

    def wait_for(self, kind: str, n: int, timeout: float = 30.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages(kind)
            if len(got) >= n:
                time.sleep(0.3)  # anything beyond n would be a duplicate: let it show
                return self.messages(kind)
            time.sleep(0.1)
        return self.messages(kind)
