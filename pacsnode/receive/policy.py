"""Who may associate: the caller policy (AE title + address) and DICOM TLS.

Checked while negotiating and answered with the standard A-ASSOCIATE-RJ reasons:

* the called AE title must be the node's (``called AE title not recognised``);
* the calling AE title must be listed in ``security.allowed_callers`` together with the
  network the peer connects from (``calling AE title not recognised``);
* optional DICOM TLS, TLS 1.2 or newer, client certificates verified against the CA.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from typing import Any

from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association

from pacsnode.config import SecuritySettings, TlsSettings
from pacsnode.errors import ConfigError

__all__ = ["CallerPolicy", "PolicyAE", "make_server_ssl_context"]

# --- TLS ----------------------------------------------------------------------------------------


class _LazyHandshakeContext(ssl.SSLContext):
    """Defers the TLS handshake to the association's own thread (first read), so a slow or
    silent client cannot hold up the accept loop."""

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def make_server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """A server context: TLS 1.2+, the node's certificate, client certs verified when required."""
    if tls.cert is None or tls.key is None:
        raise ConfigError("security.tls.cert and security.tls.key are required when TLS is enabled")
    ctx = _LazyHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        if tls.ca is not None:
            ctx.load_verify_locations(cafile=str(tls.ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"security.tls files must be readable PEM certificate/key/CA, got {exc}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return ctx




class CallerPolicy:
    """Which calling AE titles may connect from which address."""

    def __init__(self, security: SecuritySettings) -> None:
        self.allow_any = security.allow_any_caller
        self._rules = [
            (c.ae_title.strip(), [ipaddress.ip_network(h, strict=False) for h in c.hosts])
            for c in security.allowed_callers
        ]

    def titles_for(self, address: str) -> list[str]:
        """Calling AE titles allowed from ``address``."""
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return []
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return [ae for ae, nets in self._rules if any(ip.version == n.version and ip in n for n in nets)]

    def allows(self, calling_ae: str, address: str) -> bool:
        return self.allow_any or calling_ae.strip() in self.titles_for(address)


_NOBODY = "\\"  # not a valid AE title: makes pynetdicom reject every calling AE


class PolicyAE(ApplicationEntity):
    """pynetdicom checks ``require_calling_aet`` while negotiating, in the association's own
    thread; answering per peer address turns its AE-title check into AE title + address."""

    policy: CallerPolicy | None = None

    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        policy = self.policy
        assoc = threading.current_thread()
        if policy is None or policy.allow_any or not isinstance(assoc, Association):
            return []
        return policy.titles_for(str(assoc.requestor.address)) or [_NOBODY]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        raise AttributeError("calling AE titles come from the node's CallerPolicy")
