"""The C-ECHO and C-STORE handlers: validation, the spool, the ledger, the timers.

The C-STORE handler is thin and has a hard boundary: whatever goes wrong becomes a
failure status (the table in :mod:`pacsnode.receive.validate`), and Success is answered
only once the instance is durable (its spool file fsynced, or its bytes flushed to the
spool journal, which puts the file in place just after the response and replays it after
a crash or once space returns) and its ledger row is committed. The data set is stored
exactly as received (file meta + the encoded bytes), after one structural walk of it
(:mod:`pacsnode.receive.header`); pixel values are never decoded.

Out of space is an answer, not a loss: before writing, the free space left after the bytes
about to be written is checked against ``node.min_free_disk_mb`` (every instance, no
cache), and ENOSPC from the spool, the journal or the ledger is answered 0xA700 too. A
duplicate SOP Instance UID is not stored twice, unless its file is missing (a resend
after a disk-full write-behind): then it is written again.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pynetdicom import evt

from pacsnode.errors import ReceiveError
from pacsnode.ledger import InstanceRecord, Ledger, RecordOutcome
from pacsnode.ops import Metrics
from pacsnode.receive import fast_dimse
from pacsnode.receive.header import Malformed, encode_file_meta, header_of
from pacsnode.receive.reactor_wait import make_event_driven
from pacsnode.receive.spool import Spool
from pacsnode.receive.validate import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_MISSING_UID,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    Refusal,
    check_instance,
)

__all__ = ["Receiver"]

LOG = logging.getLogger(__name__)
AUDIT = logging.getLogger("pacsnode.audit")
_SPACE_LOG_EVERY_S = 10.0


class Receiver:
    """C-STORE and C-ECHO handlers bound to the spool, the ledger and the completeness timers."""

    def __init__(
        self,
        spool: Spool,
        ledger: Ledger,
        *,
        unit_of: Callable[[str, str], tuple[str, str]],
        on_recorded: Callable[[RecordOutcome], None],
        min_free_disk_mb: float,
        metrics: Metrics | None = None,
        fast_data_phase: bool = True,
    ) -> None:
        self.spool = spool
        self.ledger = ledger
        self.unit_of = unit_of
        self.on_recorded = on_recorded
        self.min_free_disk_mb = min_free_disk_mb
        self.metrics = metrics or Metrics()
        self.fast_data_phase = fast_data_phase
        self.take_request: Callable[[object], bytes | None] | None = None  # set by the gate's owner
        self.audit: Any = None  # the node's pacsnode.audit.AuditTrail (association and instance events)
        self._assoc_counts: dict[int, list[int]] = {}
        self._lock = threading.Lock()
        self._space_logged = 0.0

    # events
    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_CONN_OPEN, self.handle_conn_open),
            (evt.EVT_ESTABLISHED, self.handle_established),
            (evt.EVT_REJECTED, self.handle_rejected),
            (evt.EVT_RELEASED, self.handle_ended),
            (evt.EVT_ABORTED, self.handle_ended),
        ]

    def handle_echo(self, event: Any) -> int:
        return STATUS_SUCCESS

    def handle_conn_open(self, event: Any) -> None:
        _tune_socket(event.assoc)
        wrapper = event.assoc.dul.socket
        raw = getattr(wrapper, "socket", None)
        request = self.take_request(raw) if self.take_request is not None else None
        driven = make_event_driven(event.assoc)
        if request is not None:
            if not driven:  # pynetdicom internals changed: the gate's bytes cannot be handed on
                LOG.error("association from %s aborted: its A-ASSOCIATE-RQ was read by the gate and "
                          "cannot be handed to pynetdicom", event.assoc.requestor.address)
                event.assoc.abort()
                return
            wrapper._pushback = request
        if driven and self.fast_data_phase and not isinstance(raw, ssl.SSLSocket):
            fast_dimse.enable(event.assoc, self)

    def handle_established(self, event: Any) -> None:
        with self._lock:
            self._assoc_counts[id(event.assoc)] = [0, 0, 0]
        self.metrics.inc("associations_accepted_total")
        if self.audit is not None:
            self.audit.association_accepted(event.assoc)

    def handle_rejected(self, event: Any) -> None:
        self.metrics.inc("associations_rejected_total")
        rq = event.assoc.requestor
        # the called AE title the peer asked for (not ours), from its A-ASSOCIATE-RQ
        called = getattr(getattr(rq, "primitive", None), "called_ae_title", None) or event.assoc.acceptor.ae_title
        AUDIT.warning("association rejected: calling AE %r called AE %r from %s:%s",
                      rq.ae_title, str(called).strip(), rq.address, rq.port)
        if self.audit is not None:
            self.audit.association_rejected(event.assoc, _rejection(event.assoc, str(called).strip()))

    def handle_ended(self, event: Any) -> None:
        with self._lock:
            stored, dup, failed = self._assoc_counts.pop(id(event.assoc), [0, 0, 0])
        if self.audit is not None:
            self.audit.association_ended(event.assoc)
        outcome = "released" if event.event is evt.EVT_RELEASED else "aborted"
        rq = event.assoc.requestor
        AUDIT.info("association %s: calling AE %r from %s:%s, %d stored, %d duplicate, %d failed",
                   outcome, rq.ae_title, rq.address, rq.port, stored, dup, failed)

    def _count(self, assoc: Any, index: int) -> None:
        with self._lock:
            c = self._assoc_counts.get(id(assoc))
            if c is not None:
                c[index] += 1

    def handle_store(self, event: Any) -> int:
        """pynetdicom's EVT_C_STORE (associations not on the fast data phase)."""
        data = event.request.DataSet.getbuffer()  # a view: the instance's bytes are not copied
        try:
            return self.store(event.assoc, [data], _accepted_syntax(event.context),
                              str(event.request.AffectedSOPInstanceUID),
                              abstract_syntax=str(event.context.abstract_syntax),
                              affected_sop_class_uid=str(event.request.AffectedSOPClassUID))
        finally:
            data.release()

    def store(self, assoc: Any, chunks: Sequence[bytes | bytearray | memoryview], transfer_syntax: str,
              affected_sop_instance_uid: str, after_response: list[Callable[[], None]] | None = None,
              data_crc: int | None = None, *, abstract_syntax: str | None = None,
              affected_sop_class_uid: str | None = None) -> int:
        """One received instance (its data set as ``chunks``) → a C-STORE status.

        The hard boundary: every outcome is a status, never an exception. With
        ``after_response`` the instance is durable (journaled) and in the ledger when this
        returns, and the functions appended to it put its spool file in place; the caller
        runs them once the response is sent. ``data_crc``: CRC-32 of the data set's bytes, if
        the caller computed it as they arrived (saves the journal reading them again).
        ``abstract_syntax`` / ``affected_sop_class_uid``: the presentation context's and the
        request's SOP class, which the data set's must match."""
        t0 = time.perf_counter()
        try:
            status = self._store(assoc, chunks, transfer_syntax, affected_sop_instance_uid, after_response,
                                 data_crc, abstract_syntax, affected_sop_class_uid)
        except Refusal as exc:
            if exc.status == STATUS_OUT_OF_RESOURCES:
                self._log_space(str(exc))
            else:
                LOG.warning("C-STORE from %r refused (0x%04X): %s", _caller(assoc), exc.status, exc)
            status = exc.status
        except Malformed as exc:
            LOG.warning("C-STORE from %r refused (0xC000): %s", _caller(assoc), exc)
            status = STATUS_CANNOT_UNDERSTAND
        except ReceiveError as exc:
            LOG.warning("C-STORE from %r refused: %s", _caller(assoc), exc)
            status = STATUS_MISSING_UID if "must carry" in str(exc) else STATUS_CANNOT_UNDERSTAND
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._log_space(f"out of disk space writing the instance: {exc}")
                status = STATUS_OUT_OF_RESOURCES
            else:
                LOG.exception("C-STORE: I/O failure")
                status = STATUS_PROCESSING_FAILURE
        except Exception:
            LOG.exception("C-STORE: unexpected failure")
            status = STATUS_PROCESSING_FAILURE
        if status != STATUS_SUCCESS:
            self.metrics.inc("instances_failed_total")
            if status == STATUS_OUT_OF_RESOURCES:
                self.metrics.inc("instances_out_of_resources_total")
            self._count(assoc, 2)
        self.metrics.observe("receive", time.perf_counter() - t0)
        return status

    def _log_space(self, message: str) -> None:
        now = time.monotonic()
        if now - self._space_logged >= _SPACE_LOG_EVERY_S:
            self._space_logged = now
            LOG.error("C-STORE answered Out of Resources (0xA700): %s", message)

    def after_response(self, finishers: list[Callable[[], None]]) -> None:
        """The C-STORE response is out: put the journaled instances' files in place (while
        the peer sends the next one). A failure is logged; the journal keeps the bytes and
        restores the file once it can (the unit does not complete before)."""
        for finish in finishers:
            try:
                finish()
            except Exception as exc:
                LOG.error("writing a journaled instance file failed (%s); the spool journal restores "
                          "it once space returns", exc)

    def _store(self, assoc: Any, chunks: Sequence[bytes | bytearray | memoryview], ts: str,
               affected_uid: str, after_response: list[Callable[[], None]] | None,
               data_crc: int | None, abstract_syntax: str | None, affected_class: str | None) -> int:
        header = header_of(chunks, ts)
        check_instance(header, ts, affected_uid, abstract_syntax, affected_class)
        unit_uid, unit_kind = self.unit_of(header.study_uid, header.series_uid)
        path = self.spool.path_for(header.study_uid, header.series_uid, header.sop_instance_uid)
        known = self.ledger.instance_path(header.sop_instance_uid)
        size = 0
        if known is None or not (known.is_file() or self.spool.restoring(known)):
            if known is not None:
                LOG.warning("instance %s is in the ledger but its file is missing: written again",
                            header.sop_instance_uid)
                path = Path(known)
            meta = encode_file_meta(header.sop_class_uid, header.sop_instance_uid, ts,
                                    _caller(assoc))
            need = len(meta) + sum(memoryview(c).nbytes for c in chunks)
            self.spool.ensure_room(need, self.min_free_disk_mb)
            size, finish = self.spool.write_behind(path, (meta, *chunks),
                                                   None if data_crc is None else (1, data_crc))
            if after_response is None:
                finish()
            else:
                after_response.append(finish)
        rec = InstanceRecord(
            sop_instance_uid=header.sop_instance_uid, sop_class_uid=header.sop_class_uid,
            series_uid=header.series_uid, study_uid=header.study_uid, path=path, size=size,
            transfer_syntax=ts,
        )
        outcome = self.ledger.record_instance(rec, header.attributes, unit_uid=unit_uid, unit_kind=unit_kind)
        if outcome.stored:
            self.metrics.inc("instances_received_total")
            self.metrics.inc("bytes_received_total", size)
            self._count(assoc, 0)
            if self.audit is not None:
                self.audit.instance_stored(assoc, header, path)
        else:
            self.metrics.inc("instances_duplicate_total")
            self._count(assoc, 1)
        self.on_recorded(outcome)
        return STATUS_SUCCESS


def _rejection(assoc: Any, called: str) -> str:
    """Why an association was rejected, from its A-ASSOCIATE-RJ (for the audit message)."""
    rj = getattr(assoc.acceptor, "primitive", None)
    why = getattr(rj, "reason_str", "") or "rejected"
    return f"association rejected ({why}): calling AE {_caller(assoc)!r}, called AE {called!r}"


def _caller(assoc: Any) -> str:
    try:
        return str(assoc.requestor.ae_title).strip()
    except AttributeError:
        return ""


def _accepted_syntax(context: Any) -> str:
    ts = context.transfer_syntax  # the accepted one (a UID)
    return str(ts if isinstance(ts, str) else ts[0])


def _tune_socket(assoc: Any) -> None:
    """TCP_NODELAY on the accepted connection."""
    wrapper = getattr(getattr(assoc, "dul", None), "socket", None)
    sock = getattr(wrapper, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
