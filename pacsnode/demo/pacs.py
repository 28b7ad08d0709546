"""The demo's PACS where Orthanc is not installed: DCMTK's storescp, or pynetdicom's own SCP.

Both write each received instance as ``<modality prefix>.<SOP Instance UID>`` into a folder
("SG" for a SEG, "SR" for an SR), which is how the demo sees its results arrive. The pynetdicom
one needs nothing beyond ``pip install pacsnode``.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["StoreSCP", "PythonStoreSCP", "STORESCP_BIN"]

STORESCP_BIN = Path("/usr/bin/storescp")


@dataclass
class StoreSCP:
    """DCMTK's storescp as the stand-in PACS."""

    directory: Path
    port: int
    ae_title: str = "STORESCP"
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(STORESCP_BIN), "-aet", self.ae_title, "+xa", "-od", str(self.directory), str(self.port)],
            env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None


@dataclass
class PythonStoreSCP:
    """A minimal storage SCP in this process (pynetdicom): accepts every storage SOP class."""

    directory: Path
    port: int
    ae_title: str = "DEMOPACS"
    _server: Any = field(default=None, init=False, repr=False)

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        self.directory.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        prefix = {"SEG": "SG", "SR": "SR"}.get(str(ds.get("Modality", "")), "OT")
        final = self.directory / f"{prefix}.{ds.SOPInstanceUID}"
        partial = final.with_name(final.name + ".partial")
        ds.save_as(partial, enforce_file_format=True)
        os.replace(partial, final)  # the demo only ever sees whole files
        return 0x0000

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
