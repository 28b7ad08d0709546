"""C-ECHO a destination: the probe that tells when a destination that was down answers.

Same association set-up as the C-STORE SCU (:mod:`pacsnode.delivery.scu`): the destination's
calling AE title, TLS when it says so, TCP_NODELAY. A destination that accepts the
association answers, whatever it says to the C-ECHO itself (a PACS that does not offer
Verification is up all the same; its C-STORE will tell).
"""

from __future__ import annotations

import logging

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacsnode.config import Destination
from pacsnode.delivery.scu import (
    _connect_reason,
    _on_acse,
    _on_open,
    _Peer,
    _peer_name,
    _unreachable,
    tls_context,
)

__all__ = ["echo_destination"]

log = logging.getLogger(__name__)


def echo_destination(destination: Destination, calling_ae: str, *, timeout: float = 30.0) -> int | None:
    """Associate with ``destination`` and C-ECHO it; returns the C-ECHO status (None when the
    peer accepted the association but not Verification). Raises
    :class:`~pacsnode.errors.DeliveryError` (``unreachable``) naming the peer and the reason
    when there is no association or no answer."""
    peer_name = _peer_name(destination)
    ae = AE(ae_title=destination.calling_ae_title or calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    peer = _Peer()
    handlers = [(evt.EVT_CONN_OPEN, _on_open), (evt.EVT_ACSE_RECV, _on_acse, [peer])]
    tls_args = (tls_context(destination), destination.host) if destination.tls else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         evt_handlers=handlers, tls_args=tls_args)
    if not assoc.is_established:
        reason = peer.reason or _connect_reason(destination, timeout)
        raise _unreachable(f"C-ECHO to {peer_name} needs an association, got none: {reason}")
    try:
        if not assoc.accepted_contexts:
            log.info("C-ECHO to %s: association accepted, Verification not offered", peer_name)
            return None
        rsp = assoc.send_c_echo()
        if not rsp or "Status" not in rsp:
            raise _unreachable(f"C-ECHO to {peer_name} got no response: "
                               f"{peer.reason or 'association aborted, released or timed out'}")
        status = int(rsp.Status)
        log.info("C-ECHO to %s: status 0x%04X", peer_name, status)
        return status
    finally:
        if assoc.is_established:
            assoc.release()
