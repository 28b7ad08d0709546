"""config.toml → frozen, typed settings.

Every section is a frozen dataclass. Loading walks the TOML document against the
dataclass fields: an unknown key, a wrong type or a value outside its range is one
:class:`~pacsnode.errors.ConfigError` whose message names the key, e.g.

    node.port must be an integer from 1 to 65535, got 70000

Nothing is coerced silently (a string "11112" is not a port) and the caller's
dict is never mutated.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from pacsnode.errors import ConfigError

__all__ = [
    "Settings",
    "NodeSettings",
    "SecuritySettings",
    "AllowedCaller",
    "TlsSettings",
    "SeriesSettings",
    "RouteMatch",
    "Route",
    "Destination",
    "ModelEntry",
    "InputSelector",
    "SchedulerSettings",
    "DeliverySettings",
    "RetentionSettings",
    "MetricsSettings",
    "DicomwebSettings",
    "AuditSettings",
    "ClusterSettings",
    "load_settings",
    "parse_settings",
    "build_dataclass",
]

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash


def _check(rule: Callable[[Any], bool], text: str) -> dict[str, Any]:
    """Field metadata: a predicate and the words for what is valid."""
    return {"check": (rule, text)}


def _port(allow_zero: bool = False) -> dict[str, Any]:
    lo = 0 if allow_zero else 1
    return _check(lambda v: lo <= v <= 65535, f"an integer from {lo} to 65535")


def _positive() -> dict[str, Any]:
    return _check(lambda v: v > 0, "a positive number")


def _non_negative() -> dict[str, Any]:
    return _check(lambda v: v >= 0, "zero or a positive number")


def _ae_title() -> dict[str, Any]:
    return _check(
        lambda v: bool(_AE_RE.match(v)) and v.strip() != "",
        "an AE title of 1 to 16 printable characters without a backslash",
    )


def _is_network(v: str) -> bool:
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        return False
    return True


def _is_regex(v: str) -> bool:
    try:
        re.compile(v)
    except re.error:
        return False
    return True


@dataclass(frozen=True)
class NodeSettings:
    """[node]: who the node is on the network and where it keeps its state."""

    ae_title: str = field(default="PACSNODE", metadata=_ae_title())
    bind_address: str = "127.0.0.1"
    port: int = field(default=11112, metadata=_port())
    state_dir: Path = Path("var/pacsnode")
    max_associations: int = field(default=8, metadata=_positive())
    max_pdu: int = field(
        default=262144,
        metadata=_check(lambda v: v == 0 or 4096 <= v <= 2**32 - 1, "0 (unlimited) or from 4096"),
    )
    acse_timeout: float = field(default=30.0, metadata=_positive())
    artim_timeout: float = field(default=10.0, metadata=_positive())
    max_pending_connections: int = field(default=16, metadata=_positive())
    max_pending_per_address: int = field(default=4, metadata=_positive())
    dimse_timeout: float = field(default=60.0, metadata=_positive())
    network_timeout: float = field(default=60.0, metadata=_positive())
    min_free_disk_mb: int = field(default=1024, metadata=_non_negative())
    fsync: bool = True
    spool_journal: bool = True
    fast_data_phase: bool = True


@dataclass(frozen=True)
class AllowedCaller:
    """One entry of [[security.allowed_callers]]: an AE title and the networks it may call from."""

    ae_title: str = field(metadata=_ae_title())
    hosts: tuple[str, ...] = field(
        default=("127.0.0.1/32",),
        metadata=_check(lambda v: all(_is_network(h) for h in v), "IP addresses or networks"),
    )


@dataclass(frozen=True)
class TlsSettings:
    """[security.tls]: DICOM TLS (TLS 1.2 or newer)."""

    enabled: bool = False
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_client_cert: bool = True


@dataclass(frozen=True)
class SecuritySettings:
    """[security]: association policy."""

    require_called_ae: bool = True
    allow_any_caller: bool = False
    allowed_callers: tuple[AllowedCaller, ...] = ()
    tls: TlsSettings = TlsSettings()


@dataclass(frozen=True)
class SeriesSettings:
    """[series]: what a unit of work is and when it is complete."""

    group_by: Literal["series", "study"] = "series"
    stable_seconds: float = field(default=10.0, metadata=_positive())


@dataclass(frozen=True)
class RouteMatch:
    """[routes.match]: every non-empty criterion must hold (empty means any)."""

    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    series_description: str = field(default="", metadata=_check(_is_regex, "a valid regular expression"))
    image_type: tuple[str, ...] = ()
    sop_class_uid: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    """[[routes]]: series attributes → model → outputs → destinations."""

    name: str
    model: str
    match: RouteMatch = RouteMatch()
    outputs: tuple[Literal["seg", "sr", "nifti"], ...] = ("seg",)
    seg_type: Literal["binary", "fractional", "labelmap"] = "binary"
    destinations: tuple[str, ...] = ()


@dataclass(frozen=True)
class Destination:
    """[destinations.NAME]: a peer that receives results, by C-STORE (``kind = "dimse"``:
    ae_title, host, port) or by STOW-RS (``kind = "dicomweb"``: url, with basic auth from
    ``username`` + ``password_file`` or a bearer token from ``token_file``; ``tls_ca`` verifies
    an https server)."""

    kind: Literal["dimse", "dicomweb"] = "dimse"
    ae_title: str = field(default="", metadata=_check(lambda v: v == "" or bool(_AE_RE.match(v)) and v.strip() != "",
                                                      "an AE title of 1 to 16 printable characters without a backslash"))
    host: str = ""
    port: int = field(default=0, metadata=_port(allow_zero=True))
    calling_ae_title: str = field(default="", metadata=_check(lambda v: v == "" or bool(_AE_RE.match(v)), "empty (use node.ae_title) or an AE title"))
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    url: str = field(default="", metadata=_check(lambda v: v == "" or v.startswith(("http://", "https://")),
                                                 "an http:// or https:// URL (the DICOMweb service root)"))
    username: str = ""
    password_file: Path | None = None
    token_file: Path | None = None


@dataclass(frozen=True)
class InputSelector:
    """[models.NAME.inputs.CHANNEL]: this site's rule for finding one model input's series, used
    in place of the card's SeriesDescription regex (a scanner's "AX T1 MPRAGE" maps without
    re-exporting the model). Every criterion set must hold; ``modality`` empty keeps the card's.
    Regular expressions are searched; listed values (ScanningSequence, SequenceVariant,
    ImageType) must all be present; ``contrast`` asks for ContrastBolusAgent present or absent."""

    modality: str = field(default="", metadata=_check(lambda v: v == "" or bool(re.fullmatch(r"[A-Z]{2,16}", v)),
                                                      "empty (the card's) or a DICOM Modality code such as MR"))
    series_description: str = field(default="", metadata=_check(_is_regex, "a valid regular expression"))
    protocol_name: str = field(default="", metadata=_check(_is_regex, "a valid regular expression"))
    sequence_name: str = field(default="", metadata=_check(_is_regex, "a valid regular expression"))
    scanning_sequence: tuple[str, ...] = ()
    sequence_variant: tuple[str, ...] = ()
    image_type: tuple[str, ...] = ()
    contrast: Literal["any", "with", "without"] = "any"

    def criteria(self) -> list[str]:
        """The names of the criteria this selector sets (modality aside)."""
        return [f.name for f in fields(self)
                if f.name != "modality" and getattr(self, f.name) not in ("", (), "any")]


@dataclass(frozen=True)
class ModelEntry:
    """[models.NAME]: a deployable .onnx file ("builtin:NAME" for one shipped in the package), the
    runtime that runs it (``auto``: the fastest installed one that passes the parity self-check on
    load) and its precision (bf16 / int8 only where the model card records evidence for it; ``auto``:
    bf16 where the card validated it and the CPU runs it, else fp32, or int8 for an int8 file); and
    this site's selectors for its inputs (``inputs.CHANNEL``, see :class:`InputSelector`)."""

    file: str
    threads: int = field(default=2, metadata=_positive())
    backend: Literal["auto", "openvino", "onnxruntime"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    inputs: Mapping[str, InputSelector] = field(default_factory=dict)


@dataclass(frozen=True)
class SchedulerSettings:
    """[scheduler]: workers, retries with exponential backoff, then dead letter."""

    workers: int = field(default=1, metadata=_positive())
    max_attempts: int = field(default=3, metadata=_positive())
    backoff_seconds: float = field(default=10.0, metadata=_positive())
    backoff_multiplier: float = field(default=2.0, metadata=_check(lambda v: v >= 1, "a number of at least 1"))
    max_backoff_seconds: float = field(default=600.0, metadata=_positive())


@dataclass(frozen=True)
class DeliverySettings:
    """[delivery]: the outbox's own policy for long outages (jobs keep [scheduler]'s).

    A failed delivery is retried after ``backoff_seconds * backoff_multiplier ** (n - 1)``
    (capped at ``max_backoff_seconds``); a destination whose connection or association fails
    is down and probed by C-ECHO every ``probe_seconds``, its deliveries sent as soon as it
    answers; a delivery is dead-lettered only once it has been failing for longer than
    ``horizon_hours`` since its first attempt.
    """

    horizon_hours: float = field(default=24.0, metadata=_positive())
    backoff_seconds: float = field(default=10.0, metadata=_positive())
    backoff_multiplier: float = field(default=2.0, metadata=_check(lambda v: v >= 1, "a number of at least 1"))
    max_backoff_seconds: float = field(default=600.0, metadata=_positive())
    probe_seconds: float = field(default=30.0, metadata=_positive())


@dataclass(frozen=True)
class RetentionSettings:
    """[retention]: how long received instances and results are kept once a series has ended."""

    done_days: float = field(default=7.0, metadata=_non_negative())
    failed_days: float = field(default=30.0, metadata=_non_negative())
    ignored_hours: float = field(default=24.0, metadata=_non_negative())
    interval_minutes: float = field(default=60.0, metadata=_positive())


@dataclass(frozen=True)
class DicomwebSettings:
    """[dicomweb]: the node's STOW-RS endpoint (port 0 turns it off). Callers must
    authenticate: HTTP basic against ``users_file`` (``name:sha256-hex-of-password`` a line)
    or a bearer token from ``tokens_file`` (one a line); TLS with ``tls_cert`` and ``tls_key``."""

    bind_address: str = "127.0.0.1"
    port: int = field(default=0, metadata=_port(allow_zero=True))
    root: str = "/dicom-web"
    users_file: Path | None = None
    tokens_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_request_mb: float = field(default=2048.0, metadata=_positive())


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: the HTTP status page and Prometheus metrics (port 0 turns it off)."""

    bind_address: str = "127.0.0.1"
    port: int = field(default=0, metadata=_port(allow_zero=True))


@dataclass(frozen=True)
class AuditSettings:
    """[audit]: DICOM audit messages (PS3.15 A.5, IHE ATNA) to an audit repository over syslog
    (``host`` set: RFC 5424 over ``transport`` udp, tls (RFC 5425) or tcp; queued on disk while
    it cannot be reached), or to a local file (``host`` empty: ``file``, by default
    ``<state_dir>/audit/audit.log``). ``patient_id``: the Patient ID in the messages as it is
    ("plain") or as a pseudonym ("pseudonym": a keyed hash, the same for the same patient)."""

    enabled: bool = True
    host: str = ""
    port: int = field(default=6514, metadata=_port())
    transport: Literal["udp", "tls", "tcp"] = "tls"
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    file: Path | None = None
    source_id: str = ""
    site_id: str = ""
    patient_id: Literal["plain", "pseudonym"] = "plain"
    retry_seconds: float = field(default=5.0, metadata=_positive())


@dataclass(frozen=True)
class ClusterSettings:
    """[cluster]: several receivers and workers on one PostgreSQL (docs/cluster.md). Without this
    section the node is embedded: SQLite and the in-process scheduler. ``spool_dir`` and
    ``results_dir`` must be storage every receiver and worker mounts (NFS in a hospital); a worker
    silent for ``stall_seconds`` loses its jobs to another worker."""

    dsn: str = field(metadata=_check(lambda v: v.startswith(("postgresql://", "postgres://")),
                                     "a PostgreSQL URL (postgresql://user@host:5432/database)"))
    spool_dir: Path
    results_dir: Path
    stall_seconds: float = field(default=60.0, metadata=_check(lambda v: v >= 2, "a number of seconds of at least 2"))


@dataclass(frozen=True)
class Settings:
    """The whole of config.toml."""

    node: NodeSettings = NodeSettings()
    security: SecuritySettings = SecuritySettings()
    series: SeriesSettings = SeriesSettings()
    routes: tuple[Route, ...] = ()
    destinations: Mapping[str, Destination] = field(default_factory=dict)
    models: Mapping[str, ModelEntry] = field(default_factory=dict)
    scheduler: SchedulerSettings = SchedulerSettings()
    delivery: DeliverySettings = DeliverySettings()
    retention: RetentionSettings = RetentionSettings()
    metrics: MetricsSettings = MetricsSettings()
    dicomweb: DicomwebSettings = DicomwebSettings()
    audit: AuditSettings = AuditSettings()
    cluster: ClusterSettings | None = None
    source: Path | None = None

    def model_file(self, name: str) -> str:
        """Where [models.NAME] lives: ``builtin:NAME`` as written, or an absolute path (a relative
        one is relative to the config file)."""
        file = self.models[name].file
        if file.startswith("builtin:"):
            return file
        path = Path(file).expanduser()
        if not path.is_absolute() and self.source is not None:
            path = self.source.resolve().parent / path
        return str(path)


def load_settings(path: str | Path) -> Settings:
    """Read and validate a config file; relative paths in it are relative to the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_settings(data, base_dir=path.resolve().parent, source=path)


def parse_settings(
    data: Mapping[str, Any], base_dir: Path | None = None, source: Path | None = None
) -> Settings:
    """Validate a parsed TOML document (a plain mapping) into :class:`Settings`."""
    values = _build(Settings, {k: v for k, v in data.items()}, "", base_dir)
    settings = Settings(**{**values, "source": source})
    _cross_check(settings)
    return settings


# --- the walker ---------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is Path:
        return "a path (string)"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin in (Mapping, dict) or origin is typing.get_origin(Mapping[str, int]):
        return "a table"
    if is_dataclass(tp):
        return "a table"
    return str(tp)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: str, key: str) -> str:
    """``${VAR}`` and ``${VAR:-default}`` in a path, from the environment (systemd's
    StateDirectory= sets STATE_DIRECTORY); an unset variable without a default names the key."""
    def one(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{key} must name environment variables that are set, got ${{{name}}} unset; "
                          f"give a default: ${{{name}:-/path}}")
    return _ENV_RE.sub(one, value)


def _convert(tp: Any, value: Any, key: str, base_dir: Path | None) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or value == "":
            if type(None) in args:
                return None
        return _convert(non_none[0], value, key, base_dir)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str) or value == "":
            raise ConfigError(f"{key} must be a path (string), got {value!r}")
        p = Path(_expand_env(value, key)).expanduser()
        if base_dir is not None and not p.is_absolute():
            p = base_dir / p
        return p
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
        return tuple(_convert(args[0], v, f"{key}[{i}]", base_dir) for i, v in enumerate(value))
    if origin is Mapping or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return types.MappingProxyType(
            {k: _convert(args[1], v, _key(key, k), base_dir) for k, v in value.items()}
        )
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return tp(**_build(tp, value, key, base_dir))
    raise ConfigError(f"{key}: unsupported setting type {tp!r}")  # pragma: no cover


def build_dataclass(cls: type, data: Mapping[str, Any], prefix: str = "",
                    base_dir: Path | None = None) -> dict[str, Any]:
    """Validate ``data`` against the fields of the dataclass ``cls`` (nested dataclasses, tuples,
    mappings, Literal, Path…) and return the constructor's keyword arguments. Every error is a
    :class:`ConfigError` naming the key (``prefix.key``). Other typed configs (the training
    presets) reuse this walker rather than writing their own."""
    return _build(cls, data, prefix, base_dir)


def _build(cls: type, data: Mapping[str, Any], prefix: str, base_dir: Path | None) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.name != "source" or cls is not Settings}
    if cls is Settings:
        known.pop("source", None)
    for name in data:
        if name not in known:
            where = f"[{prefix}]" if prefix else "the top level"
            valid = ", ".join(sorted(known))
            raise ConfigError(f"{_key(prefix, name)} is not a known setting in {where}; valid keys: {valid}")
    out: dict[str, Any] = {}
    for name, f in known.items():
        key = _key(prefix, name)
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{key} is required")
            continue
        value = _convert(hints[name], data[name], key, base_dir)
        check = f.metadata.get("check")
        if check is not None:
            rule, text = check
            if not rule(value):
                raise ConfigError(f"{key} must be {text}, got {data[name]!r}")
        out[name] = value
    return out


def _cross_check(s: Settings) -> None:
    d = s.delivery
    if d.max_backoff_seconds < d.backoff_seconds:
        raise ConfigError(
            f"delivery.max_backoff_seconds must be at least delivery.backoff_seconds "
            f"({d.backoff_seconds:g}), got {d.max_backoff_seconds:g}"
        )
    names = [r.name for r in s.routes]
    for i, route in enumerate(s.routes):
        if names.count(route.name) > 1:
            raise ConfigError(f"routes[{i}].name must be unique, got {route.name!r} twice")
        if route.model not in s.models:
            valid = ", ".join(sorted(s.models)) or "none defined"
            raise ConfigError(
                f"routes[{i}].model must name a [models] entry, got {route.model!r}; valid: {valid}"
            )
        for dest in route.destinations:
            if dest not in s.destinations:
                valid = ", ".join(sorted(s.destinations)) or "none defined"
                raise ConfigError(
                    f"routes[{i}].destinations must name [destinations] entries, got {dest!r}; valid: {valid}"
                )
    web = s.dicomweb
    if web.port and web.users_file is None and web.tokens_file is None:
        raise ConfigError("dicomweb.users_file or dicomweb.tokens_file is required when dicomweb.port is set "
                          "(STOW-RS takes authenticated callers only)")
    if (web.tls_cert is None) != (web.tls_key is None):
        raise ConfigError("dicomweb.tls_cert and dicomweb.tls_key go together, got one of them")
    for name, d in s.destinations.items():
        if d.kind == "dimse":
            for key, ok in (("ae_title", d.ae_title), ("host", d.host), ("port", d.port)):
                if not ok:
                    raise ConfigError(f"destinations.{name}.{key} is required for a C-STORE (kind = \"dimse\") "
                                      f"destination")
        else:
            if not d.url:
                raise ConfigError(f"destinations.{name}.url is required for a STOW-RS (kind = \"dicomweb\") "
                                  f"destination")
            if d.password_file is not None and not d.username:
                raise ConfigError(f"destinations.{name}.username is required with password_file")
            if d.password_file is not None and d.token_file is not None:
                raise ConfigError(f"destinations.{name} may have password_file or token_file, got both")
    for name, entry in s.models.items():
        for channel, selector in entry.inputs.items():
            if not selector.criteria():
                raise ConfigError(
                    f"models.{name}.inputs.{channel} must set at least one of series_description, "
                    f"protocol_name, sequence_name, scanning_sequence, sequence_variant, image_type, "
                    f"contrast, got none")
    a = s.audit
    if a.host and a.transport == "tls" and a.tls_ca is None:
        raise ConfigError("audit.tls_ca is required when audit.transport is \"tls\" (the repository's CA)")
    if (a.tls_cert is None) != (a.tls_key is None):
        raise ConfigError("audit.tls_cert and audit.tls_key must be given together, got one of them")
    tls = s.security.tls
    if tls.enabled:
        for name in ("cert", "key"):
            if getattr(tls, name) is None:
                raise ConfigError(f"security.tls.{name} is required when security.tls.enabled is true")
        if tls.require_client_cert and tls.ca is None:
            raise ConfigError("security.tls.ca is required when security.tls.require_client_cert is true")
    if not s.security.allow_any_caller and not s.security.allowed_callers:
        raise ConfigError(
            "security.allowed_callers must list at least one caller unless security.allow_any_caller is true"
        )
