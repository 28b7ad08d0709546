"""`pacsnode echo HOST PORT`: C-ECHO a DICOM peer (exit 0 when it answers Success, 1 otherwise)."""

from __future__ import annotations

import argparse
import socket

from pacsnode.cli.peer import check_ae_title, check_port, quiet_pynetdicom, resolve
from pacsnode.config import Destination
from pacsnode.errors import DeliveryError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("echo", help="verify a DICOM peer with C-ECHO (exit 0 when it answers, 1 when not)")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--aet", default="PACSNODE-CLI", help="calling AE title (default PACSNODE-CLI)")
    p.add_argument("--aec", default="PACSNODE", help="called AE title (default PACSNODE)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each step (default 30)")
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
    from pacsnode.delivery.echo import echo_destination

    quiet_pynetdicom(args.verbose)
    check_ae_title(args.aet, "--aet")
    check_ae_title(args.aec, "--aec")
    check_port(args.port)
    resolve(args.host, args.port)
    peer = f"{args.aec}@{args.host}:{args.port}"
    status = echo_destination(Destination(ae_title=args.aec, host=args.host, port=args.port), args.aet,
                              timeout=args.timeout)
    if status is None:
        raise DeliveryError(f"C-ECHO to {peer} needs the Verification service, got an association without it")
    print(f"C-ECHO {peer}: status 0x{status:04X}")
    return 0 if status == 0 else 1
