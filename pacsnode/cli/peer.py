"""What `pacsnode echo` and `pacsnode send` check about a peer before they call it.

Bad arguments are :class:`PacsnodeError` (exit 2); a host name that does not resolve is a
network failure, :class:`DeliveryError` (exit 1), like a refused connection.
"""

from __future__ import annotations

import re
import socket

from pacsnode.errors import DeliveryError, PacsnodeError

__all__ = ["check_ae_title", "check_port", "resolve", "no_association_reason", "quiet_pynetdicom"]

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def check_ae_title(value: str, option: str) -> str:
    if not _AE_RE.match(value) or not value.strip():
        raise PacsnodeError(f"{option} must be an AE title of 1 to 16 printable characters without a backslash, "
                            f"got {value!r}")
    return value


def check_port(port: int, what: str = "PORT") -> int:
    if not 0 < port < 65536:
        raise PacsnodeError(f"{what} must be an integer from 1 to 65535, got {port}")
    return port


def resolve(host: str, port: int) -> None:
    """Raise :class:`DeliveryError` naming ``host`` when this machine cannot resolve it."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise DeliveryError(f"host {host!r} must be a name or address this machine can resolve, got: "
                            f"{reason}") from None


def no_association_reason(host: str, port: int, rejected: bool, timeout: float = 10.0) -> str:
    """Why an association did not come about, in words: rejected, refused, timed out."""
    if rejected:
        return "the peer rejected the association (check the calling and called AE titles)"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "the peer accepted the TCP connection but aborted or did not answer the association"
    except ConnectionRefusedError:
        return "connection refused (nothing listens on that port)"
    except TimeoutError:
        return f"connection timed out after {timeout:g} s"
    except OSError as exc:
        return f"connection failed: {exc.strerror or exc}"


def quiet_pynetdicom(verbose: int) -> None:
    """pynetdicom logs a failed association at ERROR; the command says it once, in its own line."""
    import logging

    if verbose < 2:
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
