"""Audit messages to an audit repository over syslog, or to a local file.

* :func:`syslog_frame` — one RFC 5424 message: ``<85>1 TIMESTAMP HOST APP PROCID MSGID - BOM XML``
  (facility 10 security/authorization, severity 5 notice; MSGID ``IHE+RFC-3881``, as IHE
  ITI-20 asks for audit messages);
* :class:`QueuedSender` — every message is first written to a disk queue (one file each,
  temp file + ``os.replace``, so a crash never leaves half a message), then a thread sends
  the queue in order: over UDP (RFC 5426, one datagram each), over TLS (RFC 5425: octet
  counting, ``LEN SP MSG``, TLS 1.2 or newer, the repository's certificate verified) or plain
  TCP with the same framing (RFC 6587, for a repository on the same host). A message leaves
  the queue once it is written to the socket; while the repository cannot be reached the
  queue keeps growing on disk and is sent, in order, as soon as it can, also after a
  restart. What TCP and TLS cannot tell (a repository that crashes with messages in its
  receive buffer) is not detected: RFC 5425 has no acknowledgements;
* :class:`FileWriter` — no repository configured: one RFC 5424 line per message appended to
  a file (flushed and fsynced per message).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["syslog_frame", "QueuedSender", "FileWriter", "PRI", "MSGID"]

LOG = logging.getLogger(__name__)

PRI = 10 * 8 + 5  # facility 10 (security/authorization), severity 5 (notice)
MSGID = "IHE+RFC-3881"
_BOM = b"\xef\xbb\xbf"
_SETTLE_SECONDS = 0.5


def _field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, at most ``limit``, or '-'."""
    clean = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return clean or "-"


def syslog_frame(message: bytes, app_name: str, hostname: str | None = None, procid: int | None = None,
                 when: datetime | None = None) -> bytes:
    """One RFC 5424 syslog message carrying ``message`` (UTF-8, with its BOM) as MSG."""
    ts = (when or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    head = (f"<{PRI}>1 {ts} {_field(hostname or socket.gethostname(), 255)} {_field(app_name, 48)} "
            f"{procid if procid is not None else os.getpid()} {MSGID} - ")
    return head.encode("ascii") + _BOM + message


class FileWriter:
    """Appends each message as one line to ``path`` (no repository configured)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def submit(self, frame: bytes) -> None:
        with self._lock, self.path.open("ab") as fh:
            fh.write(frame.replace(b"\n", b" ") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 0.0) -> None:
        pass

    def pending(self) -> int:
        return 0


class QueuedSender:
    """Disk queue in ``queue_dir`` + a thread that sends it to ``host:port`` over ``transport``
    ("udp", "tls" or "tcp"), retrying every ``retry_seconds`` while it cannot."""

    def __init__(self, queue_dir: Path, host: str, port: int, transport: str, *,
                 tls_context: ssl.SSLContext | None = None, retry_seconds: float = 5.0,
                 timeout: float = 10.0) -> None:
        if transport not in ("udp", "tls", "tcp"):
            raise ValueError(f"audit transport must be one of udp, tls, tcp, got {transport!r}")
        if transport == "tls" and tls_context is None:
            raise ValueError("audit transport tls needs a TLS context")
        self.queue_dir = queue_dir
        self.host, self.port, self.transport = host, port, transport
        self.tls_context = tls_context
        self.retry_seconds = retry_seconds
        self.timeout = timeout
        self.last_error = ""
        self.sent = 0
        queue_dir.mkdir(parents=True, exist_ok=True)
        self._seq = self._last_seq()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    # --- the queue ------------------------------------------------------------------------------

    def _last_seq(self) -> int:
        seqs = [int(p.stem) for p in self.queue_dir.glob("*.msg") if p.stem.isdigit()]
        return max(seqs, default=0)

    def _queued(self) -> list[Path]:
        return sorted((p for p in self.queue_dir.glob("*.msg") if p.stem.isdigit()), key=lambda p: int(p.stem))

    def pending(self) -> int:
        return len(self._queued())

    def submit(self, frame: bytes) -> None:
        """Queue one message durably, then wake the sender."""
        with self._lock:
            self._seq += 1
            path = self.queue_dir / f"{self._seq:016d}.msg"
            tmp = path.with_suffix(".tmp")
            with tmp.open("wb") as fh:
                fh.write(frame)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        self._wake.set()

    # --- the thread -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="audit-sender", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Try to send what is queued for up to ``timeout`` s, then stop; the rest stays on disk."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline and self._thread is not None:
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, self.timeout))
            self._thread = None
        self._close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._drain()
            except (OSError, ssl.SSLError) as exc:
                self._close()
                if str(exc) != self.last_error:
                    LOG.warning("audit repository %s:%d (%s) not reachable: %s; %d messages queued in %s",
                                self.host, self.port, self.transport, exc, self.pending(), self.queue_dir)
                self.last_error = str(exc)
                self._stop.wait(self.retry_seconds)
                continue
            self._wake.wait(self.retry_seconds)

    def _drain(self) -> None:
        for path in self._queued():
            if self._stop.is_set():
                return
            frame = path.read_bytes()
            self._send(frame)
            path.unlink()
            self.sent += 1
            if self.last_error:
                LOG.warning("audit repository %s:%d reachable again", self.host, self.port)
                self.last_error = ""

    def _send(self, frame: bytes) -> None:
        if self.transport == "udp":
            with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(frame, (self.host, self.port))
            return
        sock = self._connect()
        sock.sendall(str(len(frame)).encode("ascii") + b" " + frame)

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            if self._peer_closed(self._sock):
                self._close()
            else:
                return self._sock
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.transport == "tls":
            assert self.tls_context is not None
            try:
                raw = self.tls_context.wrap_socket(raw, server_hostname=self.host)
            except (OSError, ssl.SSLError):
                raw.close()
                raise
            # With TLS 1.3 the client's handshake ends before the server has checked the client
            # certificate; a repository that refuses it closes the connection just after. Wait a
            # moment for that, so no message is written into a connection about to be dropped.
            if select.select([raw], [], [], _SETTLE_SECONDS)[0] and self._peer_closed(raw):
                raw.close()
                raise ConnectionError("the audit repository closed the TLS connection after the handshake "
                                      "(is the node's certificate, audit.tls_cert, one it accepts?)")
        self._sock = raw
        return raw

    def _peer_closed(self, sock: socket.socket) -> bool:
        """The repository closed the connection (or it broke) since the last message."""
        try:
            sock.setblocking(False)
            try:
                data = sock.recv(1, socket.MSG_PEEK) if not isinstance(sock, ssl.SSLSocket) else sock.recv(1)
            finally:
                sock.settimeout(self.timeout)
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        except (OSError, ssl.SSLError):
            return True
        return data == b""

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
