"""C-STORE SCU: send result datasets to one destination (TLS when it says so).

One association per call, proposing exactly the presentation contexts the datasets need:
for each SOP class, one context with the dataset's own transfer syntax and one with
Explicit/Implicit VR Little Endian as a fallback. TCP_NODELAY is set on the socket as soon
as it connects (without it every C-STORE stalls on delayed ACKs; DESIGN.md field notes).
Any failure — connection refused, timeout, association rejected or aborted, no accepted
context, a failure status — is one :class:`~pacsnode.errors.DeliveryError` naming the
peer (AE title, host, port) and the reason, never patient data. Its ``unreachable``
attribute tells an outage (no connection or association, or one that broke: the
destination is down) from a peer that answered and refused (a failure status).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.presentation import PresentationContext, build_context

from pacsnode.config import Destination
from pacsnode.errors import DeliveryError

__all__ = ["StoreOutcome", "send_datasets", "tls_context", "MAX_CONTEXTS", "FALLBACK_TRANSFER_SYNTAXES",
           "STORED_WARNINGS"]

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# C-STORE statuses that mean "stored" (0000 success, Bxxx warnings: coerced, elements discarded, ...)
_WARNINGS = {0xB000, 0xB006, 0xB007}
# public names for the conformance statement (pacsnode.conformance)
FALLBACK_TRANSFER_SYNTAXES: tuple[str, ...] = _UNCOMPRESSED
STORED_WARNINGS: frozenset[int] = frozenset(_WARNINGS)


@dataclass(frozen=True)
class StoreOutcome:
    """The answer of the peer to one C-STORE."""

    sop_class_uid: str
    sop_instance_uid: str
    status: int
    comment: str = ""

    @property
    def stored(self) -> bool:
        """Success or a warning status (the peer kept the instance)."""
        return self.status == 0x0000 or self.status in _WARNINGS


@dataclass
class _Peer:
    """What the association's event handlers saw: the reason of a rejection or abort."""

    reason: str = ""
    events: list[str] = field(default_factory=list)


def _peer_name(d: Destination) -> str:
    return f"{d.ae_title}@{d.host}:{d.port}{' (TLS)' if d.tls else ''}"


def tls_context(destination: Destination) -> ssl.SSLContext:
    """Client TLS context: TLS 1.2+, server verified against tls_ca (or the system CAs),
    the node's certificate and key presented when tls_cert/tls_key are set."""
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(destination.tls_ca) if destination.tls_ca else None
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if destination.tls_cert is not None:
            ctx.load_cert_chain(
                str(destination.tls_cert), str(destination.tls_key) if destination.tls_key else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryError(
            f"TLS material for {_peer_name(destination)} must be readable PEM files "
            f"(tls_ca, tls_cert, tls_key), got an error: {exc}"
        ) from None
    return ctx


def _load(item: Dataset | str | Path) -> Dataset:
    if isinstance(item, Dataset):
        return item
    try:
        return dcmread(item)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
        raise DeliveryError(f"a result file must be readable DICOM, got {item}: {exc}") from None


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(ts) if ts else ExplicitVRLittleEndian


def _contexts(datasets: Sequence[Dataset]) -> list[PresentationContext]:
    """Per SOP class: one context per distinct non-fallback syntax, plus Explicit/Implicit LE."""
    wanted: dict[str, list[UID]] = {}
    for ds in datasets:
        syntaxes = wanted.setdefault(str(ds.SOPClassUID), [])
        ts = _transfer_syntax(ds)
        if ts not in _UNCOMPRESSED and ts not in syntaxes:
            syntaxes.append(ts)
    contexts = []
    for sop_class, syntaxes in wanted.items():
        for ts in syntaxes:
            contexts.append(build_context(sop_class, [ts]))
        contexts.append(build_context(sop_class, list(_UNCOMPRESSED)))
    if len(contexts) > MAX_CONTEXTS:
        raise DeliveryError(
            f"one association may propose at most {MAX_CONTEXTS} presentation contexts, "
            f"these datasets need {len(contexts)}; send them in smaller batches"
        )
    return contexts


def _on_open(event: Any) -> None:
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _on_acse(event: Any, peer: _Peer) -> None:
    p = event.primitive
    if isinstance(p, A_ASSOCIATE) and p.result in (0x01, 0x02):
        peer.reason = f"association rejected ({p.result_str}, {p.source_str}): {p.reason_str}"
    elif isinstance(p, A_ABORT | A_P_ABORT):
        source = getattr(p, "abort_source", None)
        peer.reason = f"association aborted by the peer (source {source!r})"


def _unreachable(message: str) -> DeliveryError:
    """A DeliveryError that means the destination is down (no association, or it broke)."""
    exc = DeliveryError(message)
    exc.unreachable = True  # type: ignore[attr-defined]
    return exc


def _connect_reason(destination: Destination, timeout: float) -> str:
    """Why no association: probe the TCP connection to tell refusal from timeout."""
    try:
        with socket.create_connection((destination.host, destination.port), timeout=timeout):
            return "the peer accepted the TCP connection but not the association (timeout or TLS failure)"
    except ConnectionRefusedError:
        return "connection refused (nothing listens on that port)"
    except TimeoutError:
        return f"connection timed out after {timeout:g} s"
    except OSError as exc:
        return f"connection failed: {exc.strerror or exc}"


def send_datasets(
    destination: Destination,
    datasets: Iterable[Dataset | str | Path],
    calling_ae: str,
    *,
    timeout: float = 30.0,
    max_pdu: int = 0,
) -> list[StoreOutcome]:
    """C-STORE every dataset (or DICOM file) to ``destination`` over one association.

    Returns one :class:`StoreOutcome` per dataset, in order, when the peer stored them all.
    Raises :class:`DeliveryError` if the association cannot be made or breaks, or if any
    instance gets a failure status (the message lists them; ``exc.outcomes`` holds every
    outcome received so far).
    """
    items = [_load(x) for x in datasets]
    if not items:
        return []
    calling = destination.calling_ae_title or calling_ae
    peer_name = _peer_name(destination)
    contexts = _contexts(items)

    ae = AE(ae_title=calling)
    ae.requested_contexts = contexts
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.maximum_pdu_size = max_pdu

    peer = _Peer()
    handlers = [(evt.EVT_CONN_OPEN, _on_open), (evt.EVT_ACSE_RECV, _on_acse, [peer])]
    tls_args = (tls_context(destination), destination.host) if destination.tls else None
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        evt_handlers=handlers,
        tls_args=tls_args,
    )
    if not assoc.is_established:
        reason = peer.reason
        if not reason and assoc.is_aborted and not assoc.accepted_contexts and assoc.rejected_contexts:
            reason = "no presentation context accepted for " + ", ".join(
                sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts})
            )
        if not reason:
            reason = _connect_reason(destination, timeout)
        raise _unreachable(f"C-STORE to {peer_name} needs an association, got none: {reason}")

    outcomes: list[StoreOutcome] = []
    try:
        for ds in items:
            sop_uid = str(ds.SOPInstanceUID)
            try:
                rsp = assoc.send_c_store(ds)
            except (ValueError, RuntimeError) as exc:
                raise DeliveryError(
                    f"C-STORE of {sop_uid} to {peer_name} needs an accepted presentation context, "
                    f"got: {exc}"
                ) from None
            if not assoc.is_established or "Status" not in rsp:
                raise _unreachable(
                    f"C-STORE of {sop_uid} to {peer_name} got no response: "
                    f"{peer.reason or 'association aborted, released or timed out'}"
                )
            outcome = StoreOutcome(
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=sop_uid,
                status=int(rsp.Status),
                comment=str(rsp.get("ErrorComment", "")),
            )
            outcomes.append(outcome)
            log.info("C-STORE %s to %s: status 0x%04X", sop_uid, peer_name, outcome.status)
    except DeliveryError as exc:
        exc.outcomes = outcomes  # type: ignore[attr-defined]
        raise
    finally:
        if assoc.is_established:
            assoc.release()

    failed = [o for o in outcomes if not o.stored]
    if failed:
        detail = "; ".join(
            f"{o.sop_instance_uid} 0x{o.status:04X}{(' ' + o.comment) if o.comment else ''}" for o in failed
        )
        exc = DeliveryError(
            f"C-STORE to {peer_name} must end in success or warning for every instance, "
            f"{len(failed)} of {len(outcomes)} refused: {detail}"
        )
        exc.outcomes = outcomes  # type: ignore[attr-defined]
        raise exc
    return outcomes

