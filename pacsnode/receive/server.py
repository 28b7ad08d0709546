"""The listening AE: what it accepts, the gate in front of it, a clean stop.

``StorageSCP(settings, receiver).start()`` listens with every storage SOP class pynetdicom
knows (Enhanced CT/MR multi-frame included) in :data:`TRANSFER_SYNTAXES`, plus
Verification. Every accepted connection passes :class:`pacsnode.receive.gate.Gate`
(caps on connections not yet associated, the ARTIM deadline, the A-ASSOCIATE-RQ's
structure) before pynetdicom negotiates (caller policy, contexts, at most
``node.max_associations`` associations at once, rejected transient "local limit
exceeded" beyond).
"""

from __future__ import annotations

import logging
import socketserver
import time
from collections.abc import Sequence
from typing import Any

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationServer

from pacsnode.config import Settings
from pacsnode.receive.gate import Gate
from pacsnode.receive.handler import Receiver
from pacsnode.receive.policy import CallerPolicy, PolicyAE, make_server_ssl_context

__all__ = ["StorageSCP", "TRANSFER_SYNTAXES", "storage_contexts"]

LOG = logging.getLogger(__name__)

TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)


def storage_contexts() -> list[PresentationContext]:
    """Every storage SOP class pynetdicom knows, each with the uncompressed and the common
    compressed transfer syntaxes, plus Verification."""
    cxs = [build_context(cx.abstract_syntax, list(TRANSFER_SYNTAXES)) for cx in AllStoragePresentationContexts]
    cxs.append(build_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    return cxs


class _Contexts(list):  # type: ignore[type-arg]
    """The listening server's presentation contexts. pynetdicom deep-copies them for every
    association it accepts (~130 contexts with their UIDs: about half the node's CPU time for
    an association, 20-40 ms). A context holds immutable values (UIDs are str, the id and the
    roles are ints and bools) and one list, its transfer syntaxes, so a new object with its own
    list is the same deep copy at a fraction of the cost."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        out = []
        for cx in self:
            new = PresentationContext.__new__(PresentationContext)
            new.__dict__.update(cx.__dict__)
            new._transfer_syntax = list(cx._transfer_syntax)
            out.append(new)
        return out


def _address(client_address: Any) -> str:
    return str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)


class StorageSCP:
    """The listening AE. ``start()`` returns at once; ``stop(grace)`` stops accepting, lets the
    associations in flight finish for up to ``grace`` seconds, then aborts the rest."""

    def __init__(self, settings: Settings, receiver: Receiver) -> None:
        node = settings.node
        self.settings = settings
        self.receiver = receiver
        policy = CallerPolicy(settings.security)
        self.ae = PolicyAE(ae_title=node.ae_title)
        self.ae.policy = policy
        self.ae.require_called_aet = settings.security.require_called_ae
        self.ae.maximum_associations = node.max_associations
        self.ae.maximum_pdu_size = node.max_pdu
        self.ae.acse_timeout = node.acse_timeout
        self.ae.dimse_timeout = node.dimse_timeout
        self.ae.network_timeout = node.network_timeout
        self.ae.supported_contexts = storage_contexts()
        self.ssl_context = (
            make_server_ssl_context(settings.security.tls) if settings.security.tls.enabled else None
        )
        self.gate = Gate(node.artim_timeout, node.max_pending_connections, node.max_pending_per_address,
                         listed=lambda address: policy.allow_any or bool(policy.titles_for(address)),
                         count=receiver.metrics.inc)
        receiver.take_request = self.gate.take
        self.server: Any = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1]) if self.server is not None else self.settings.node.port

    def start(self) -> None:
        node = self.settings.node
        self.server = self.ae.start_server(
            (node.bind_address, node.port),
            block=False,
            evt_handlers=self.receiver.handlers(),
            ssl_context=self.ssl_context,
        )
        _put_gate(self.server, self.gate)
        self.server.contexts = _Contexts(self.server.contexts)
        LOG.info("listening as %s on %s:%d%s", node.ae_title, node.bind_address, self.port,
                 " (TLS)" if self.ssl_context else "")

    def active(self) -> Sequence[Any]:
        return [a for a in self.ae.active_associations if a.is_acceptor]

    def stop(self, grace: float = 30.0) -> None:
        if self.server is None:
            return
        server, self.server = self.server, None
        # Stop the accept loop and close the listening socket: new peers are refused.
        _stop_accepting(server)
        deadline = time.monotonic() + grace
        while self.active() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.active()
        for assoc in left:
            LOG.warning("aborting association from %r still open after %.0f s", assoc.requestor.ae_title, grace)
            assoc.abort()
        try:
            self.ae._servers.remove(server)
        except ValueError:
            pass


def _put_gate(server: Any, gate: Gate) -> None:
    """Run every accepted connection through ``gate`` before pynetdicom's request handler.

    ``process_request`` runs in the accept loop (the caps: refused at once, no thread);
    ``process_request_thread`` in the connection's own thread (the request, by the deadline).
    """
    accept = server.process_request
    handle = server.process_request_thread

    def process_request(request: Any, client_address: Any) -> None:
        if not gate.admit(_address(client_address)):
            server.shutdown_request(request)
            return
        accept(request, client_address)

    def process_request_thread(request: Any, client_address: Any) -> None:
        address = _address(client_address)
        try:
            ok = gate.read_request(request, address)
        finally:
            gate.release(address)
        if ok:
            handle(request, client_address)

    server.process_request = process_request
    server.process_request_thread = process_request_thread


def _stop_accepting(server: Any) -> None:
    socketserver.BaseServer.shutdown(server)
    # AssociationServer.server_close closes the socket without ThreadingMixIn's join.
    AssociationServer.server_close(server)
