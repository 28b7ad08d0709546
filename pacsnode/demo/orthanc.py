"""A private Orthanc on loopback: the demo's PACS and the end-to-end tests' real peer.

Orthanc is started with its own storage, index and free ports, so it never touches a
system instance. Its REST API is used through urllib (no extra dependency).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacsnode.errors import PacsnodeError

__all__ = ["ORTHANC_BIN", "OrthancServer", "RemoteModality", "orthanc_available"]

log = logging.getLogger(__name__)

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_available() -> bool:
    return ORTHANC_BIN.exists() or shutil.which("Orthanc") is not None


@dataclass(frozen=True)
class RemoteModality:
    """A DICOM peer Orthanc may send to (its DicomModalities entry)."""

    name: str
    ae_title: str
    host: str
    port: int


@dataclass
class OrthancServer:
    """Start and stop one Orthanc process; call its REST API."""

    workdir: Path
    dicom_port: int
    http_port: int
    ae_title: str = "ORTHANC"
    modalities: Sequence[RemoteModality] = ()
    dicomweb: bool = False  # Orthanc's DICOMweb plugin at /dicom-web/ (Debian's orthanc-dicomweb)
    users: Mapping[str, str] = field(default_factory=dict)  # HTTP basic auth, when not empty
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def explorer_url(self) -> str:
        return f"{self.url}/app/explorer.html"

    def config(self) -> dict[str, Any]:
        return {
            "Name": "pacsnode-demo-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": dict(self.users),
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "StableAge": 2,
            "Plugins": [str(DICOMWEB_PLUGIN)] if self.dicomweb else [],
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/"},
            "DicomModalities": {
                m.name: {"AET": m.ae_title, "Host": m.host, "Port": m.port} for m in self.modalities
            },
        }

    def start(self, timeout: float = 30.0) -> OrthancServer:
        if not orthanc_available():
            raise PacsnodeError(f"Orthanc is not installed at {ORTHANC_BIN}: run scripts/setup.sh")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        log_path = self.workdir / "orthanc.log"
        env = {**os.environ, "TCP_NODELAY": "1"}
        binary = str(ORTHANC_BIN if ORTHANC_BIN.exists() else shutil.which("Orthanc"))
        with open(log_path, "wb") as out:
            self._proc = subprocess.Popen(
                [binary, str(cfg)], stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PacsnodeError(
                    f"Orthanc exited with code {self._proc.returncode} on start; see {log_path}"
                )
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.stop()
        raise PacsnodeError(f"Orthanc did not answer on {self.url} within {timeout:g} s; see {log_path}")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- REST -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str = "application/json", timeout: float = 120.0) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if self.users:  # the first registered user
            user, password = next(iter(self.users.items()))
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read()

    def get(self, path: str) -> Any:
        return json.loads(self._request("GET", path))

    def get_bytes(self, path: str) -> bytes:
        return self._request("GET", path)

    def post(self, path: str, payload: Mapping[str, Any] | list[Any] | None = None) -> Any:
        raw = self._request("POST", path, json.dumps(payload if payload is not None else {}).encode())
        return json.loads(raw) if raw.strip() else None

    def put(self, path: str, payload: Any) -> Any:
        raw = self._request("PUT", path, json.dumps(payload).encode())
        return json.loads(raw) if raw.strip() else None

    def upload(self, files: Sequence[Path]) -> list[str]:
        """POST each DICOM file to /instances; returns Orthanc's instance IDs."""
        ids = []
        for f in files:
            answer = json.loads(self._request("POST", "/instances", Path(f).read_bytes(),
                                              content_type="application/dicom"))
            ids.append(answer["ID"])
        return ids

    def add_modality(self, m: RemoteModality) -> None:
        self.put(f"/modalities/{m.name}", {"AET": m.ae_title, "Host": m.host, "Port": m.port})

    def store_to(self, modality: str, resources: Sequence[str], timeout: float = 300.0) -> Any:
        """C-STORE Orthanc resources (study/series/instance IDs) to a configured modality."""
        return self.post(
            f"/modalities/{modality}/store",
            {"Resources": list(resources), "Synchronous": True, "Timeout": int(timeout)},
        )

    def study_id(self, study_uid: str) -> str | None:
        """Orthanc's ID of a study by its StudyInstanceUID (None if it has no such study)."""
        found = self.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        return found[0] if found else None

    def find_series(self, study_uid: str, modality: str) -> list[dict[str, Any]]:
        """Series of a study with a given Modality (e.g. SEG, SR), expanded."""
        return self.post(
            "/tools/find",
            {"Level": "Series", "Expand": True,
             "Query": {"StudyInstanceUID": study_uid, "Modality": modality}},
        )

    def series_instances(self, series_id: str) -> list[str]:
        return [i["ID"] for i in self.get(f"/series/{series_id}/instances")]

    def instance_file(self, instance_id: str) -> bytes:
        return self.get_bytes(f"/instances/{instance_id}/file")
