"""The C-STORE data phase in the association's own thread (pynetdicom negotiates, we stream).

pynetdicom runs every accepted association on two threads: the DUL thread reads and
decodes each PDU and queues it through its state machine to the DIMSE layer, which
reassembles the message and queues it to the association thread, which runs the handler,
encodes the response with pydicom and queues it back to the DUL thread to send. On a
2-CPU server that is 3–4 ms of Python per instance (docs/ingest.md), more than
DCMTK's storescp needs for the whole instance.

:func:`enable` keeps everything pynetdicom does well (accepting, TLS, A-ASSOCIATE
negotiation and the node's policy, release, abort, timeouts, events) and replaces only
the data phase of an established association with one loop in the association thread:

* read a P-DATA-TF PDU straight into one buffer, split it into its PDVs;
* a command set (Implicit VR Little Endian, PS3.7 §E) is read by a small walker; the data
  set's fragments are kept as views of the PDU buffers, not copied;
* C-STORE-RQ: :meth:`pacsnode.receive.handler.Receiver.store` (the same handler as pynetdicom's
  EVT_C_STORE path: spool, ledger, statuses), then the C-STORE-RSP is written to the
  socket; with the spool journal the instance is durable in the journal and in the ledger
  before the response, and its spool file is put in place just after it, while the peer
  sends the next instance (write-behind);
* C-ECHO-RQ: answered Success;
* anything else (A-RELEASE-RQ, A-ABORT, another DIMSE service, a closed connection, the
  network timeout) is handed back, unread bytes included, to pynetdicom's own reactors,
  which finish the association exactly as they would have.

The DUL thread does not read the socket while the fast path owns it
(:class:`pacsnode.receive.reactor_wait._WakeableSocket`), but it still sends whatever pynetdicom
queues (an A-ABORT from :meth:`StorageSCP.stop`, say). ``node.fast_data_phase = false``
leaves every association entirely to pynetdicom; so are DICOM TLS associations, always
(an OpenSSL "bad length" error when this loop and pynetdicom shared the TLS socket is
not understood yet, so TLS keeps pynetdicom's slower, proven path).
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any, Protocol

from pynetdicom.association import Association

from pacsnode.receive.reactor_wait import _WakeableSocket, read_into

__all__ = ["enable", "encode_response", "parse_command", "C_STORE_RQ", "C_ECHO_RQ"]

LOG = logging.getLogger(__name__)

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
_RSP = 0x8000
_NO_DATA_SET = 0x0101
_P_DATA_TF = 0x04
_MAX_PDU_READ = 256 * 1024 * 1024  # a sanity bound on a peer's PDU length, whatever it says
_POLL_S = 0.25  # how often a quiet association checks for abort / kill
_LEND_WAIT_S = 5.0  # longest wait for the DUL thread to send the A-ASSOCIATE-AC


class _Store(Protocol):
    def store(self, assoc: Any, chunks: list[memoryview], transfer_syntax: str,
              affected_sop_instance_uid: str, after_response: list[Callable[[], None]] | None = None,
              data_crc: int | None = None, *, abstract_syntax: str | None = None,
              affected_sop_class_uid: str | None = None) -> int: ...

    def after_response(self, finishers: list[Callable[[], None]]) -> None: ...


def enable(assoc: Association, receiver: _Store) -> bool:
    """Give ``assoc``'s data phase to :func:`_serve` (call from EVT_CONN_OPEN, after
    :func:`pacsnode.receive.reactor_wait.make_event_driven` succeeded)."""
    wrapper = assoc.dul.socket
    if not isinstance(wrapper, _WakeableSocket):
        return False
    wrapper.lend_on_accept()

    def run_reactor() -> None:
        # negotiation queued the A-ASSOCIATE-AC; the DUL thread lends us the socket as it sends it
        if wrapper.wait_lent(_LEND_WAIT_S):
            _serve(assoc, wrapper, receiver)
        if not assoc._kill:
            Association._run_reactor(assoc)  # pynetdicom finishes the association

    assoc._run_reactor = run_reactor  # type: ignore[method-assign]
    return True


# --- command sets ---------------------------------------------------------------------------------


def parse_command(data: bytes | bytearray) -> dict[int, bytes]:
    """The elements of an Implicit VR Little Endian command set, by tag (group 0000)."""
    out: dict[int, bytes] = {}
    pos, n = 0, len(data)
    while pos + 8 <= n:
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if group != 0x0000 or pos + length > n:
            raise ValueError(f"not a command set element at offset {pos - 8}: ({group:04X},{elem:04X})")
        out[elem] = bytes(data[pos:pos + length])
        pos += length
    if pos != n:
        raise ValueError("the command set ends inside an element header")
    return out


def _us(elements: dict[int, bytes], elem: int) -> int | None:
    v = elements.get(elem)
    return struct.unpack("<H", v)[0] if v is not None and len(v) == 2 else None


def _ui(value: str) -> bytes:
    b = value.encode("ascii")
    return b + b"\0" if len(b) % 2 else b


def encode_response(command_field: int, message_id: int, status: int, sop_class_uid: str,
                    sop_instance_uid: str | None) -> bytes:
    """A response command set (PS3.7 §9.3.1.2 / §9.3.5.2), Implicit VR Little Endian."""
    def el(elem: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, elem, len(value)) + value
    body = b"".join((
        el(0x0002, _ui(sop_class_uid)),
        el(0x0100, struct.pack("<H", command_field)),
        el(0x0120, struct.pack("<H", message_id)),
        el(0x0800, struct.pack("<H", _NO_DATA_SET)),
        el(0x0900, struct.pack("<H", status)),
        el(0x1000, _ui(sop_instance_uid)) if sop_instance_uid else b"",
    ))
    return el(0x0000, struct.pack("<I", len(body))) + body


def _p_data(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF PDU holding one whole command set."""
    pdv = struct.pack(">IBB", 2 + len(command), context_id, 0x03) + command
    return struct.pack(">BBI", _P_DATA_TF, 0, len(pdv)) + pdv


# --- the loop -------------------------------------------------------------------------------------


class _HandBack(Exception):
    """Leave the rest of the association to pynetdicom, after it reads ``pushback``."""

    def __init__(self, pushback: bytes = b"", why: str = "") -> None:
        super().__init__(why)
        self.pushback = pushback


def _wait_readable(assoc: Association, sock: socket.socket, timeout: float | None) -> None:
    """Block until ``sock`` has bytes (or EOF); hand back on the network timeout or a kill."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if assoc._kill or assoc.is_aborted or not assoc.is_established:
            raise _HandBack(why="association ended")
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        wait = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
        if wait <= 0:
            raise _HandBack(why="network timeout")  # pynetdicom's idle timer has expired too
        readable, _, _ = select.select([sock], [], [], wait)
        if readable:
            return


class _Message:
    """One DIMSE message being reassembled."""

    __slots__ = ("context_id", "command", "raw", "fields", "data", "crc")

    def __init__(self, context_id: int) -> None:
        self.context_id = context_id
        self.command = bytearray()
        # the PDUs its command came in, as (PDU body, offset of the message's first PDV): kept by
        # reference, re-encoded only if the message is handed back to pynetdicom
        self.raw: list[tuple[bytearray, int]] = []
        self.fields: dict[int, bytes] | None = None
        self.data: list[memoryview] = []
        self.crc = 0  # CRC-32 of the data set so far, for the spool journal


def _reencode(pdus: list[tuple[bytearray, int]]) -> bytes:
    """P-DATA-TF PDUs holding the PDVs of ``pdus`` from each one's offset on."""
    return b"".join(struct.pack(">BBI", _P_DATA_TF, 0, len(body) - pos) + bytes(body[pos:])
                    for body, pos in pdus)


def _serve(assoc: Association, wrapper: _WakeableSocket, receiver: _Store) -> None:
    sock = wrapper.socket
    contexts = {cx.context_id: cx for cx in assoc.accepted_contexts}
    msg: _Message | None = None
    try:
        while True:
            _wait_readable(assoc, sock, assoc.network_timeout)
            head = read_into(sock, 6)
            if len(head) < 6:
                raise _HandBack(bytes(head), "connection closed")
            pdu_type, _, length = struct.unpack(">BBI", head)
            if pdu_type != _P_DATA_TF or length > _MAX_PDU_READ:
                raise _HandBack(bytes(head), f"PDU type 0x{pdu_type:02X}")
            body = read_into(sock, length)
            if len(body) < length:
                raise _HandBack(bytes(head + body), "connection closed inside a PDU")
            assoc.dul._idle_timer.restart()
            view = memoryview(body)
            pos = 0
            while pos < length:
                if pos + 6 > length:
                    raise ValueError("a PDV item runs past the end of its P-DATA-TF")
                item_len, context_id, control = struct.unpack_from(">IBB", body, pos)
                end = pos + 4 + item_len
                if item_len < 2 or end > length:
                    raise ValueError("a PDV item runs past the end of its P-DATA-TF")
                fragment = view[pos + 6:end]
                is_command, is_last = control & 0x01, control & 0x02
                if msg is None:
                    if not is_command:
                        raise ValueError("a data set fragment arrived with no command before it")
                    msg = _Message(context_id)
                    msg.raw.append((body, pos))
                elif msg.fields is None and pos == 0:
                    msg.raw.append((body, 0))
                if context_id != msg.context_id or context_id not in contexts:
                    raise ValueError(f"PDV for presentation context {context_id}, message on "
                                     f"{msg.context_id}")
                if is_command:
                    if msg.fields is not None:
                        raise ValueError("a command fragment arrived inside a data set")
                    msg.command += fragment
                    if is_last:
                        msg.fields = parse_command(msg.command)
                        command_field = _us(msg.fields, 0x0100)
                        if command_field not in (C_STORE_RQ, C_ECHO_RQ):
                            raise _HandBack(_reencode(msg.raw), f"command 0x{command_field or 0:04X}")
                        msg.raw.clear()
                        if _us(msg.fields, 0x0800) == _NO_DATA_SET:
                            _answer(assoc, sock, receiver, contexts, msg)
                            msg = None
                else:
                    if msg.fields is None:
                        raise ValueError("a data set fragment arrived before its command was complete")
                    msg.data.append(fragment)
                    msg.crc = zlib.crc32(fragment, msg.crc)  # while the peer sends the next PDU
                    if is_last:
                        _answer(assoc, sock, receiver, contexts, msg)
                        msg = None
                pos = end
    except _HandBack as back:
        LOG.debug("fast data phase hands association back to pynetdicom: %s", back)
        # what is left (usually just the release) runs on pynetdicom's own 1 ms poll, not the
        # 5 ms blocking wait make_event_driven gave the message queue; swapped before the DUL
        # may read again, so no message can land in the old queue
        assoc.dimse.msg_queue = queue.Queue()
        wrapper.hand_back(back.pushback)
    except (OSError, ValueError, struct.error) as exc:
        # a broken peer or a protocol violation: what pynetdicom does too (A-ABORT)
        LOG.warning("aborting association from %r: %s", assoc.requestor.ae_title, exc)
        wrapper.hand_back()
        if not assoc._kill:
            assoc.abort()


def _answer(assoc: Association, sock: socket.socket, receiver: _Store, contexts: dict[int, Any],
            msg: _Message) -> None:
    fields = msg.fields or {}
    command_field = _us(fields, 0x0100)
    message_id = _us(fields, 0x0110) or 0
    sop_class = fields.get(0x0002, b"").decode("ascii", "replace").strip(" \0")
    after: list[Callable[[], None]] = []
    if command_field == C_ECHO_RQ:
        status, instance = 0x0000, None
    else:
        instance = fields.get(0x1000, b"").decode("ascii", "replace").strip(" \0")
        if not msg.data:
            LOG.warning("C-STORE-RQ %d from %r carries no data set", message_id, assoc.requestor.ae_title)
            status = 0xC000
        else:
            cx = contexts[msg.context_id]
            status = receiver.store(assoc, msg.data, str(cx.transfer_syntax[0]), instance, after, msg.crc,
                                    abstract_syntax=str(cx.abstract_syntax), affected_sop_class_uid=sop_class)
    rsp = encode_response(_RSP | (command_field or 0), message_id, status, sop_class, instance)
    try:
        sock.sendall(_p_data(msg.context_id, rsp))
    finally:
        if after:  # the instance is journaled and in the ledger: its file goes in place meanwhile
            receiver.after_response(after)
