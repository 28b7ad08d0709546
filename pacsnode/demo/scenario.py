"""The end-to-end scenario on loopback: a PACS, a node, a synthetic study, and the SEG back.

Used by ``pacsnode demo`` and by the end-to-end tests. Each piece is real: the node is a
``pacsnode serve`` process, the PACS an Orthanc process (DCMTK's storescp where Orthanc is
not installed), the study a synthetic brain MR written as DICOM, sent by the PACS to the
node by C-STORE.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacsnode.errors import PacsnodeError
from pacsnode.example_config import example_config_text

__all__ = [
    "NodeProcess",
    "free_port",
    "write_node_config",
    "echo",
    "wait_for",
]

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def _toml(doc: Mapping[str, Any], prefix: str = "") -> str:
    """A minimal TOML writer for the node's config shape (tables, arrays of tables, scalars)."""
    lines: list[str] = []
    scalars = {k: v for k, v in doc.items() if not isinstance(v, dict)
               and not (isinstance(v, list) and v and isinstance(v[0], dict))}
    for k, v in scalars.items():
        lines.append(f"{json.dumps(k) if '-' in k else k} = {_toml_value(v)}")
    for k, v in doc.items():
        key = f"{prefix}.{_key(k)}" if prefix else _key(k)
        if isinstance(v, dict):
            lines.append(f"\n[{key}]")
            lines.append(_toml(v, key))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines.append(f"\n[[{key}]]")
                lines.append(_toml(item, key))
    return "\n".join(line for line in lines if line != "")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and "-" not in k else json.dumps(k)


def write_node_config(
    path: Path,
    *,
    state_dir: Path,
    port: int,
    model_file: str,
    destination: tuple[str, str, int] | None,
    group_by: str = "study",
    stable_seconds: float = 2.0,
    outputs: Sequence[str] = ("seg", "sr"),
    seg_type: str = "binary",
    callers: Sequence[str] = ("ORTHANC", "STORESCU", "ECHOSCU", "PACSNODE-CLI"),
    scheduler: Mapping[str, Any] | None = None,
    delivery: Mapping[str, Any] | None = None,
    metrics_port: int = 0,
    match: Mapping[str, Any] | None = None,
) -> Path:
    """A node config for loopback, derived from the shipped config.toml (same sections)."""
    doc = tomllib.loads(example_config_text())
    doc["node"].update(state_dir=str(state_dir), port=port, bind_address="127.0.0.1")
    doc["security"]["allowed_callers"] = [
        {"ae_title": ae, "hosts": ["127.0.0.0/8"]} for ae in callers
    ]
    doc["series"].update(group_by=group_by, stable_seconds=stable_seconds)
    route = doc["routes"][0]
    route.update(outputs=list(outputs), seg_type=seg_type,
                 destinations=["pacs"] if destination else [])
    if match is not None:
        route["match"] = dict(match)
    doc["models"] = {route["model"]: {"file": model_file, "threads": 2}}
    if destination:
        ae, host, dport = destination
        doc["destinations"] = {"pacs": {"ae_title": ae, "host": host, "port": dport, "tls": False}}
    else:
        doc.pop("destinations", None)
    if scheduler:
        doc["scheduler"].update(scheduler)
    if delivery:
        doc.setdefault("delivery", {}).update(delivery)
    doc["metrics"]["port"] = metrics_port
    path.write_text("# written by pacsnode.demo for a loopback run\n" + _toml(doc) + "\n")
    return path


def echo(host: str, port: int, called: str, calling: str = "PACSNODE-CLI", timeout: float = 5.0) -> bool:
    """True when a C-ECHO to the peer succeeds."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``predicate()`` until it returns something truthy; raise naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise PacsnodeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass
class NodeProcess:
    """``pacsnode serve --config FILE`` as a child process, stopped with SIGTERM."""

    config: Path
    port: int
    ae_title: str = "PACSNODE"
    log_path: Path | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> NodeProcess:
        log_path = self.log_path or self.config.with_suffix(".log")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pacsnode", "serve", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )
        self.log_path = log_path

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                said = [line.removeprefix("pacsnode: error: ") for line in
                        log_path.read_text(errors="replace").splitlines() if line.startswith("pacsnode: error: ")]
                raise PacsnodeError(f"pacsnode serve exited with {self.proc.returncode}"
                                    f"{': ' + said[-1] if said else ''}; see {log_path}")
            return echo("127.0.0.1", self.port, self.ae_title, timeout=2.0)

        wait_for(up, timeout, f"the node to answer C-ECHO on port {self.port}")
        return self

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
