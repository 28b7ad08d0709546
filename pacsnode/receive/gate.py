"""The gate: a connection's life before pynetdicom sees it (PS3.8 §9.1.5, the ARTIM timer).

pynetdicom counts a connection as an association from the moment it is accepted, and its
ARTIM timer restarts on every byte, so a socket that trickles one byte every few seconds
holds one of ``node.max_associations`` slots for minutes, and a handful of them lock every
caller out before any AE-title or address check. The gate stands in front:

* **caps on connections not yet associated**, separate from the association cap: at most
  ``node.max_pending_per_address`` from one address, and at most
  ``node.max_pending_connections`` in each of two pools, addresses the caller policy
  lists and all others, so a flood from unlisted addresses never locks out a listed
  caller. Over a cap the connection is closed at once;
* **a hard ARTIM deadline**: the TLS handshake (with DICOM TLS) and the whole
  A-ASSOCIATE-RQ must arrive within ``node.artim_timeout`` seconds of the accept, however
  the bytes trickle; otherwise the socket is closed;
* **the A-ASSOCIATE-RQ's structure**: PDU type and length, the fixed fields, items that
  tile the PDU, one Application Context and one User Information item, presentation
  context IDs odd, non-zero and unique, each with one abstract syntax and at least one
  transfer syntax. A malformed PDU gets an A-ABORT and the socket is closed at once; a
  request with no presentation context gets an A-ASSOCIATE-RJ (permanent, service user).

Only then is the connection handed to pynetdicom, with the request's bytes pushed back in
front of the socket (:class:`pacsnode.receive.reactor_wait._WakeableSocket`), to negotiate as
usual: caller policy, contexts, the association cap.
"""

from __future__ import annotations

import logging
import re
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

__all__ = ["Gate", "check_associate_rq", "MalformedPdu", "NoPresentationContext"]

LOG = logging.getLogger(__name__)
AUDIT = logging.getLogger("pacsnode.audit")

MAX_RQ_BYTES = 1 << 20  # an A-ASSOCIATE-RQ with 128 contexts of 20 transfer syntaxes is ~70 KiB
_PDU_NAMES = {0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF", 0x05: "A-RELEASE-RQ",
              0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}


class MalformedPdu(ValueError):
    """The bytes are not a well-formed A-ASSOCIATE-RQ; ``reason`` is the A-ABORT reason."""

    def __init__(self, message: str, reason: int = 6) -> None:
        super().__init__(message)
        self.reason = reason


class NoPresentationContext(ValueError):
    """A well-formed A-ASSOCIATE-RQ that proposes nothing."""


class _Timeout(Exception):
    pass


def _items(body: bytes, start: int, what: str) -> list[tuple[int, bytes]]:
    """The (type, value) items tiling ``body[start:]`` (1-byte type, reserved, 2-byte length)."""
    out = []
    pos = start
    while pos < len(body):
        if pos + 4 > len(body):
            raise MalformedPdu(f"{what} must tile its container, got {len(body) - pos} stray bytes")
        item_type, _, length = struct.unpack_from(">BBH", body, pos)
        if pos + 4 + length > len(body):
            raise MalformedPdu(f"{what} item 0x{item_type:02X} of length {length} must fit, got "
                               f"{len(body) - pos - 4} bytes left")
        out.append((item_type, body[pos + 4:pos + 4 + length]))
        pos += 4 + length
    return out


_AE = re.compile(rb"^[\x20-\x5b\x5d-\x7e]{16}$")
_UID = re.compile(rb"^[0-9.]{1,64}[\0 ]?$")
_TEXT = re.compile(rb"^[\x20-\x7e]{1,16}[\0 ]?$")


def _uid(value: bytes, what: str) -> None:
    if not _UID.match(value):
        raise MalformedPdu(f"{what} must be a UID, got {value[:70]!r}")


def _user_information(value: bytes) -> None:
    """The sub-items pynetdicom decodes as text or numbers must be what it can decode."""
    for sub_type, sub in _items(value, 0, "User Information"):
        if sub_type == 0x51 and len(sub) != 4:
            raise MalformedPdu(f"Maximum Length must be 4 bytes, got {len(sub)}")
        if sub_type == 0x52:
            _uid(sub, "the Implementation Class UID")
        if sub_type == 0x55 and not _TEXT.match(sub):
            raise MalformedPdu(f"the Implementation Version Name must be 1 to 16 printable characters, "
                               f"got {sub[:20]!r}")
        if sub_type == 0x53 and len(sub) != 4:
            raise MalformedPdu(f"Asynchronous Operations Window must be 4 bytes, got {len(sub)}")
        if sub_type in (0x54, 0x56, 0x57):
            if len(sub) < 2 or 2 + int.from_bytes(sub[:2], "big") > len(sub):
                raise MalformedPdu(f"User Information sub-item 0x{sub_type:02X} must hold its UID, got "
                                   f"{len(sub)} bytes")
            _uid(sub[2:2 + int.from_bytes(sub[:2], "big")], f"User Information sub-item 0x{sub_type:02X}")


def check_associate_rq(pdu: bytes) -> None:
    """Raise :class:`MalformedPdu` or :class:`NoPresentationContext` unless ``pdu`` (header
    included) is a well-formed A-ASSOCIATE-RQ proposing at least one presentation context."""
    if len(pdu) < 6:
        raise MalformedPdu(f"a PDU needs a 6-byte header, got {len(pdu)} bytes", reason=1)
    pdu_type, _, length = struct.unpack_from(">BBI", pdu)
    if pdu_type != 0x01:
        known = _PDU_NAMES.get(pdu_type)
        raise MalformedPdu(f"the first PDU must be an A-ASSOCIATE-RQ (0x01), got "
                           f"{known or 'unknown type'} (0x{pdu_type:02X})", reason=2 if known else 1)
    body = pdu[6:]
    if len(body) != length or length < 68:
        raise MalformedPdu(f"an A-ASSOCIATE-RQ must be at least 68 bytes as its header says, got "
                           f"{len(body)} of {length}")
    for name, raw in (("called AE title", body[4:20]), ("calling AE title", body[20:36])):
        if not _AE.match(raw) or not raw.strip(b" \0"):
            raise MalformedPdu(f"the {name} must be 1 to 16 printable ASCII characters, got {raw!r}")
    items = _items(body, 68, "A-ASSOCIATE-RQ")
    kinds = Counter(t for t, _ in items)
    if kinds[0x10] != 1 or kinds[0x50] != 1:
        raise MalformedPdu(f"an A-ASSOCIATE-RQ must hold one Application Context and one User "
                           f"Information item, got {kinds[0x10]} and {kinds[0x50]}")
    unknown = sorted(t for t in kinds if t not in (0x10, 0x20, 0x50))
    if unknown:
        raise MalformedPdu(f"an A-ASSOCIATE-RQ may hold items 0x10, 0x20 and 0x50, got "
                           f"{', '.join(f'0x{t:02X}' for t in unknown)}", reason=4)
    seen: set[int] = set()
    for item_type, value in items:
        if item_type == 0x10:
            _uid(value, "the application context name")
        elif item_type == 0x50:
            _user_information(value)
        if item_type != 0x20:
            continue
        if len(value) < 4:
            raise MalformedPdu(f"a presentation context item needs at least 4 bytes, got {len(value)}")
        cid = value[0]
        if cid % 2 == 0 or cid in seen:
            raise MalformedPdu(f"presentation context IDs must be odd, from 1 to 255 and unique, "
                               f"got {cid}{' twice' if cid in seen else ''}")
        seen.add(cid)
        subitems = _items(value, 4, f"presentation context {cid}")
        for sub_type, sub_value in subitems:
            _uid(sub_value, f"presentation context {cid}'s {'abstract' if sub_type == 0x30 else 'transfer'} syntax")
        sub = Counter(t for t, _ in subitems)
        if sub[0x30] != 1 or sub[0x40] < 1 or set(sub) - {0x30, 0x40}:
            raise MalformedPdu(f"presentation context {cid} must hold one abstract syntax and at least "
                               f"one transfer syntax, got {dict(sub)}")
    if not seen:
        raise NoPresentationContext("an A-ASSOCIATE-RQ must propose at least one presentation context, "
                                    "got none")


class Gate:
    """Caps and the ARTIM deadline for connections not yet associated."""

    def __init__(self, artim_timeout: float, max_pending: int, max_per_address: int,
                 listed: Callable[[str], bool], count: Callable[[str], None] | None = None) -> None:
        self.artim_timeout = artim_timeout
        self.max_pending = max_pending
        self.max_per_address = max_per_address
        self.listed = listed
        self.count = count or (lambda _name: None)
        self._lock = threading.Lock()
        self._by_address: Counter[str] = Counter()
        self._by_pool: Counter[bool] = Counter()
        self._requests: dict[int, bytes] = {}
        self.on_tls_failure: Callable[[str, str], None] | None = None  # (address, reason): the audit

    # --- caps (accept thread) -------------------------------------------------------------------

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``; False (and counted nothing) when over a cap."""
        pool = self.listed(address)
        with self._lock:
            if self._by_address[address] >= self.max_per_address or self._by_pool[pool] >= self.max_pending:
                over = True
            else:
                over = False
                self._by_address[address] += 1
                self._by_pool[pool] += 1
        if over:
            self.count("connections_refused_total")
            AUDIT.warning("connection from %s closed: too many connections not yet associated "
                          "(node.max_pending_per_address = %d, node.max_pending_connections = %d)",
                          address, self.max_per_address, self.max_pending)
        return not over

    def release(self, address: str) -> None:
        pool = self.listed(address)
        with self._lock:
            self._by_address[address] -= 1
            if self._by_address[address] <= 0:
                del self._by_address[address]
            self._by_pool[pool] -= 1

    def pending(self) -> int:
        with self._lock:
            return sum(self._by_pool.values())

    # --- the request (connection thread) --------------------------------------------------------

    def read_request(self, sock: socket.socket, address: str) -> bool:
        """Handshake and read the A-ASSOCIATE-RQ by the deadline, check it, keep its bytes for
        :meth:`take`. False: the connection was answered (A-ABORT / A-ASSOCIATE-RJ) or not, and
        closed."""
        deadline = time.monotonic() + self.artim_timeout
        timeout = sock.gettimeout()
        try:
            sock.setblocking(False)
            if isinstance(sock, ssl.SSLSocket):
                _handshake(sock, deadline)
            head = _recv_exact(sock, 6, deadline)
            pdu_type, _, length = struct.unpack(">BBI", head)
            if pdu_type == 0x01 and length > MAX_RQ_BYTES:
                raise MalformedPdu(f"an A-ASSOCIATE-RQ must be at most {MAX_RQ_BYTES} bytes, got {length}")
            pdu = head + (_recv_exact(sock, length, deadline) if pdu_type == 0x01 else b"")
            check_associate_rq(pdu)
        except _Timeout:
            self.count("artim_expired_total")
            AUDIT.warning("connection from %s closed: no complete A-ASSOCIATE-RQ within "
                          "node.artim_timeout = %g s", address, self.artim_timeout)
            _close(sock)
            return False
        except NoPresentationContext as exc:
            self.count("associations_rejected_total")
            AUDIT.warning("association from %s rejected: %s", address, exc)
            _send_and_close(sock, bytes((0x03, 0, 0, 0, 0, 4, 0, 1, 1, 1)))  # permanent, user, none
            return False
        except MalformedPdu as exc:
            self.count("malformed_pdus_total")
            AUDIT.warning("connection from %s aborted: %s", address, exc)
            _send_and_close(sock, bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, exc.reason)))
            return False
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            LOG.info("connection from %s ended before associating: %s", address, exc)
            if isinstance(exc, ssl.SSLError) and self.on_tls_failure is not None:
                self.on_tls_failure(address, str(exc))
            _close(sock)
            return False
        sock.settimeout(timeout)
        with self._lock:
            self._requests[id(sock)] = pdu
        return True

    def take(self, sock: object) -> bytes | None:
        """The A-ASSOCIATE-RQ read from ``sock`` (once), for pynetdicom to read first."""
        with self._lock:
            return self._requests.pop(id(sock), None)


def _wait(sock: socket.socket, deadline: float, write: bool = False) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Timeout
    r, w, _ = select.select([] if write else [sock], [sock] if write else [], [], left)
    if not r and not w:
        raise _Timeout


def _handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            _wait(sock, deadline)
        except ssl.SSLWantWriteError:
            _wait(sock, deadline, write=True)


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            _wait(sock, deadline)
        try:
            chunk = sock.recv(n - len(buf))
        except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            continue
        if not chunk:
            raise ConnectionError(f"the peer closed the connection after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _send_and_close(sock: socket.socket, pdu: bytes) -> None:
    try:
        sock.settimeout(1.0)
        sock.sendall(pdu)
    except (OSError, ssl.SSLError):
        pass
    _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ssl.SSLError):
        pass
    sock.close()
