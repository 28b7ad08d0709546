"""Pre-flight: will this configuration run on this machine, as this user?

``pacsnode config check`` prints every :class:`Finding`; ``pacsnode serve`` runs the same checks
and refuses to start while one fails. Each finding is one line naming the key and the problem,
with the exit code it stands for: 2 for a configuration that cannot work (a model file that is
missing or refused, an override naming no input, two services on one port, a port that needs
privileges, a state dir this user cannot write, unreadable TLS material), 1 for the machine's
state now (a port another process holds, too little free disk, a destination that does not
answer C-ECHO).

Checks: every [models] entry loads as the node would load it and each of its inputs has a
selector that can find a series (site overrides name real inputs; one-series units feed
one-input models only); node.port and metrics.port differ and can be bound now; the state dir
(or the folder that will hold it) is writable by the running user, and so is everything already
in it; free disk against node.min_free_disk_mb; TLS files readable and valid PEM; with
``online`` each C-STORE destination answers C-ECHO (:func:`pacsnode.delivery.echo_destination`).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import pwd
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pacsnode.config import Settings
from pacsnode.errors import ConfigError, PacsnodeError

__all__ = ["Finding", "preflight", "failures", "exit_code", "EXIT_BAD_CONFIG", "EXIT_RUNTIME"]

EXIT_BAD_CONFIG = 2
EXIT_RUNTIME = 1


@dataclass(frozen=True)
class Finding:
    """One check's outcome: ``code`` 0 passed, 1 failed now (runtime), 2 cannot work (config)."""

    what: str
    message: str
    code: int = 0

    @property
    def ok(self) -> bool:
        return self.code == 0


def failures(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if not f.ok]


def exit_code(findings: list[Finding]) -> int:
    """2 when any check says the configuration cannot work, else 1 when one failed, else 0."""
    return max((f.code for f in findings), default=0)


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def preflight(settings: Settings, *, online: bool = False, echo_timeout: float = 10.0,
              bind: bool = True) -> list[Finding]:
    """Every check, in the order an operator fixes them; never raises for what it checks."""
    out: list[Finding] = []
    out += _models(settings)
    if bind:
        out += _ports(settings)
    out += _state_dir(settings)
    out += _tls(settings)
    out += _destinations(settings, online, echo_timeout)
    return out


# --- models ---------------------------------------------------------------------------------------


def _models(s: Settings) -> Iterator[Finding]:
    from pacsnode.inference.model import Model
    from pacsnode.volume.select import input_selectors

    used = {r.model for r in s.routes}
    for name, entry in s.models.items():
        what = f"models.{name}"
        kwargs = {k: getattr(entry, k) for k in ("backend", "precision") if hasattr(entry, k)}
        try:
            model = Model.load(s.model_file(name), threads=entry.threads, **kwargs)
        except PacsnodeError as exc:
            yield Finding(what, f"{what}.file: {exc}", EXIT_BAD_CONFIG)
            continue
        card = model.card
        try:
            selectors = input_selectors(card.inputs, entry.inputs, model=name)
        except ConfigError as exc:
            yield Finding(what, str(exc), EXIT_BAD_CONFIG)
            continue
        if s.series.group_by == "series" and len(selectors) > 1 and name in used:
            yield Finding(what, f"series.group_by must be \"study\" for model {name}, which reads "
                                f"{len(selectors)} series ({', '.join(x.name for x in selectors)}), got \"series\" "
                                f"(a unit would hold one series only)", EXIT_BAD_CONFIG)
            continue
        bad_route = _route_excludes_inputs(s, name, selectors)
        if bad_route:
            yield Finding(what, bad_route, EXIT_BAD_CONFIG)
            continue
        own = [x.name for x in selectors if x.source != "model card"]
        how = f"site selectors for {', '.join(own)}" if own else "the card's selectors"
        yield Finding(what, f"{what}: {card.name} {card.version} (sha256 {model.sha256[:12]}), inputs "
                            f"{', '.join(x.name for x in selectors)} by {how}"
                            f"{'' if name in used else '; no route uses it'}")


def _route_excludes_inputs(s: Settings, model: str, selectors: list) -> str | None:
    """With one-series units, a route whose Modality criterion excludes the input's modality
    can never feed the model."""
    if s.series.group_by != "series":
        return None
    for i, route in enumerate(s.routes):
        if route.model != model or not route.match.modality:
            continue
        allowed = {m.strip().upper() for m in route.match.modality}
        for sel in selectors:
            if sel.modality.upper() not in allowed:
                return (f"routes[{i}].match.modality must include {sel.modality} for model {model}'s input "
                        f"{sel.name}, got {', '.join(route.match.modality)}")
    return None


# --- ports ----------------------------------------------------------------------------------------


def _any_address(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def _ports(s: Settings) -> Iterator[Finding]:
    node, metrics = s.node, s.metrics
    clash = (metrics.port and metrics.port == node.port
             and (metrics.bind_address == node.bind_address or _any_address(metrics.bind_address)
                  or _any_address(node.bind_address)))
    if clash:
        yield Finding("metrics.port", f"metrics.port must differ from node.port, got {metrics.port} for both "
                                      f"(on {node.bind_address} and {metrics.bind_address})", EXIT_BAD_CONFIG)
    yield _bind("node.port", "node.bind_address", node.bind_address, node.port, "DICOM")
    if metrics.port and not clash:
        yield _bind("metrics.port", "metrics.bind_address", metrics.bind_address, metrics.port, "HTTP")


def _bind(key: str, address_key: str, address: str, port: int, service: str) -> Finding:
    """Can this user bind (address, port) now? The socket is closed again at once."""
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return Finding(key, f"{address_key} must be an address of this machine, got {address!r} "
                            f"({exc.strerror})", EXIT_BAD_CONFIG)
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return Finding(key, f"{key} {port} on {address} must be free, got in use by another process "
                                    f"(another pacsnode, or a {service} service on that port?)", EXIT_RUNTIME)
            if exc.errno == errno.EACCES:
                return Finding(key, f"{key} {port} needs root or the capability CAP_NET_BIND_SERVICE "
                                    f"(deploy/pacsnode.service grants it), got permission denied as user "
                                    f"{_user()}; or use a port from 1024", EXIT_BAD_CONFIG)
            if exc.errno == errno.EADDRNOTAVAIL:
                return Finding(key, f"{address_key} must be an address of this machine, got {address}",
                               EXIT_BAD_CONFIG)
            return Finding(key, f"{key} {port} on {address} cannot be bound: {exc.strerror or exc}",
                           EXIT_RUNTIME)
    return Finding(key, f"{key} {port} on {address} is free ({service})")


# --- state dir and disk ---------------------------------------------------------------------------


def _existing_parent(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _state_dir(s: Settings) -> Iterator[Finding]:
    state = Path(s.node.state_dir)
    key = "node.state_dir"
    if state.exists() and not state.is_dir():
        yield Finding(key, f"{key} must be a directory, got a file: {state}", EXIT_BAD_CONFIG)
        return
    where = state if state.exists() else _existing_parent(state)
    if not where.is_dir():
        yield Finding(key, f"{key} must be under a directory, got {state} (no folder above it)",
                      EXIT_BAD_CONFIG)
        return
    problem = _not_writable(where)
    if problem:
        detail = "" if where == state else f" (it does not exist yet and {where} cannot hold it)"
        yield Finding(key, f"{key} {state} must be writable by user {_user()}, got {problem}{detail}",
                      EXIT_BAD_CONFIG)
        return
    stuck = [p for p in _entries(state) if not os.access(p, os.W_OK)]
    if stuck:
        shown = ", ".join(str(p) for p in stuck[:3]) + (f" and {len(stuck) - 3} more" if len(stuck) > 3 else "")
        yield Finding(key, f"{key} {state} must hold only files user {_user()} can write, got read-only "
                           f"{shown} (written by another user? chown them to the service user)",
                      EXIT_BAD_CONFIG)
        return
    yield Finding(key, f"{key} {state} is writable by user {_user()}"
                       f"{'' if where == state else ' (it will be created)'}")
    free_mb = shutil.disk_usage(where).free / 2**20
    need = s.node.min_free_disk_mb
    if free_mb < need:
        yield Finding("node.min_free_disk_mb",
                      f"free disk under {where} must be at least node.min_free_disk_mb = {need} MiB, got "
                      f"{free_mb:.0f} MiB (the node answers C-STORE with A700 until there is room)", EXIT_RUNTIME)
    else:
        yield Finding("node.min_free_disk_mb", f"{free_mb:.0f} MiB free under {where} "
                                               f"(node.min_free_disk_mb = {need})")


def _not_writable(folder: Path) -> str | None:
    """Why this user cannot create a file in ``folder`` (None when it can): tried for real."""
    try:
        fd, name = tempfile.mkstemp(prefix=".pacsnode-preflight-", dir=folder)
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    os.close(fd)
    os.unlink(name)
    return None


def _entries(state: Path) -> list[Path]:
    """The state dir's own files and first-level folders' entries that the node writes."""
    if not state.is_dir():
        return []
    out = []
    for p in sorted(state.iterdir()):
        out.append(p)
        if p.is_dir():
            try:
                out.extend(sorted(p.iterdir())[:50])
            except OSError:
                pass
    return out


# --- TLS ------------------------------------------------------------------------------------------


def _tls(s: Settings) -> Iterator[Finding]:
    files: list[tuple[str, Path]] = []
    tls = s.security.tls
    if tls.enabled:
        files += [(f"security.tls.{k}", getattr(tls, k)) for k in ("cert", "key", "ca") if getattr(tls, k)]
    for name, d in s.destinations.items():
        if getattr(d, "tls", False):
            files += [(f"destinations.{name}.{k}", getattr(d, k)) for k in ("tls_ca", "tls_cert", "tls_key")
                      if getattr(d, k, None)]
    if not files:
        yield Finding("tls", "TLS: off (no certificate files to check)")
        return
    bad = False
    for key, path in files:
        try:
            with open(path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            bad = True
            yield Finding(key, f"{key} {path} must be readable by user {_user()}, got "
                               f"{(exc.strerror or str(exc)).lower()}", EXIT_BAD_CONFIG)
    if bad:
        return
    if tls.enabled:
        from pacsnode.receive.policy import make_server_ssl_context

        try:
            make_server_ssl_context(tls)
        except (ConfigError, ssl.SSLError, OSError) as exc:
            yield Finding("security.tls", str(exc), EXIT_BAD_CONFIG)
            return
    for name, d in s.destinations.items():
        if getattr(d, "tls", False) and getattr(d, "kind", "dimse") == "dimse":
            from pacsnode.delivery.scu import tls_context

            try:
                tls_context(d)
            except PacsnodeError as exc:
                yield Finding(f"destinations.{name}", f"destinations.{name}: {exc}", EXIT_BAD_CONFIG)
                return
    yield Finding("tls", f"TLS: {len(files)} file(s) readable and valid PEM")


# --- destinations ---------------------------------------------------------------------------------


def _destinations(s: Settings, online: bool, timeout: float) -> Iterator[Finding]:
    for name, d in s.destinations.items():
        key = f"destinations.{name}"
        if getattr(d, "kind", "dimse") != "dimse":
            yield Finding(key, f"{key}: STOW-RS to {getattr(d, 'url', '')} (not contacted: C-ECHO is for DIMSE)")
            continue
        peer = f"{d.ae_title}@{d.host}:{d.port}{' (TLS)' if d.tls else ''}"
        if _is_self(s, d.host, d.port):
            yield Finding(key, f"{key} must be another peer, got the node itself ({peer})", EXIT_BAD_CONFIG)
            continue
        if not online:
            yield Finding(key, f"{key}: {peer} (not contacted; --online C-ECHOes it)")
            continue
        yield _echo(s, key, d, peer, timeout)


def _is_self(s: Settings, host: str, port: int) -> bool:
    if port != s.node.port:
        return False
    try:
        ip = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return False
    node = s.node.bind_address
    return str(ip) == node or (ip.is_loopback and (_any_address(node) or node.startswith("127.")))


def _echo(s: Settings, key: str, d, peer: str, timeout: float) -> Finding:
    from pacsnode.delivery.echo import echo_destination

    try:
        socket.getaddrinfo(d.host, d.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Finding(key, f"{key}.host must be a name or address this machine can resolve, got "
                            f"{d.host!r} ({exc.strerror})", EXIT_RUNTIME)
    try:
        status = echo_destination(d, s.node.ae_title, timeout=timeout)
    except PacsnodeError as exc:
        return Finding(key, f"{key}: {exc}", EXIT_RUNTIME)
    except OSError as exc:
        return Finding(key, f"{key}: C-ECHO to {peer} failed: {exc.strerror or exc}", EXIT_RUNTIME)
    if status is None:
        return Finding(key, f"{key}: {peer} accepted the association (it does not offer C-ECHO)")
    if status != 0:
        return Finding(key, f"{key}: C-ECHO to {peer} must answer status 0x0000, got 0x{status:04X}",
                       EXIT_RUNTIME)
    return Finding(key, f"{key}: {peer} answers C-ECHO")
