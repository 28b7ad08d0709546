"""`pacsnode echo HOST PORT`: C-ECHO a DICOM peer."""

from __future__ import annotations

import argparse
import socket

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacsnode.errors import DeliveryError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("echo", help="verify a DICOM peer with C-ECHO")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--aet", default="PACSNODE-CLI", help="calling AE title (default PACSNODE-CLI)")
    p.add_argument("--aec", default="PACSNODE", help="called AE title (default PACSNODE)")
    p.set_defaults(func=_echo)


def set_nodelay(assoc: object) -> None:
    """TCP_NODELAY on an association's socket (pynetdicom leaves Nagle on)."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _echo(args: argparse.Namespace) -> int:
    ae = AE(ae_title=args.aet)
    ae.add_requested_context(Verification)
    assoc = ae.associate(args.host, args.port, ae_title=args.aec)
    if not assoc.is_established:
        raise DeliveryError(
            f"association to {args.aec}@{args.host}:{args.port} must be accepted, got "
            f"{'rejected' if assoc.is_rejected else 'aborted or no answer'}")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    print(f"C-ECHO {args.aec}@{args.host}:{args.port}: status 0x{code:04X}" if code is not None
          else f"C-ECHO {args.aec}@{args.host}:{args.port}: no response")
    return 0 if code == 0 else 1
