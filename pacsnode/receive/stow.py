"""STOW-RS into the node (PS3.18 §10.5): the same door as C-STORE, over HTTP.

``POST {root}/studies`` (or ``{root}/studies/{StudyInstanceUID}``) with a
``multipart/related; type="application/dicom"`` body, one DICOM file per part. Each part
goes through :meth:`pacsnode.receive.handler.Receiver.store`, exactly as a C-STORE does:
the structural walk, the rules of :mod:`pacsnode.receive.validate`, the free-space rule, the
spool and the ledger. Only authenticated callers get in: HTTP basic (``[dicomweb]
users_file``: one ``name:sha256-hex-of-password`` a line) or a bearer token
(``tokens_file``: one token a line); TLS with ``tls_cert`` / ``tls_key``.

Answers: 200 every instance stored; 202 some stored, some not; 409 none stored (the
DICOM JSON body lists each instance with its FailureReason, the C-STORE status it would
have got); 400 a body that is not a well-formed multipart/related; 401 no or wrong
credentials (``WWW-Authenticate``); 413 larger than ``max_request_mb``; 415 not
multipart/related of application/dicom; 404 another path. A refused request stores
nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import ssl
import struct
import threading
from collections.abc import Callable
from email.parser import BytesHeaderParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.filereader import read_dataset

from pacsnode.receive.header import header_of
from pacsnode.receive.validate import STATUS_SOP_CLASS_MISMATCH, STATUS_SUCCESS

__all__ = ["StowServer", "Credentials", "parse_multipart"]

LOG = logging.getLogger(__name__)
AUDIT = logging.getLogger("pacsnode.audit")

_PATH = re.compile(r"^/studies(?:/([0-9.]{1,64}))?/?$")


class _Caller:
    """What the receiver reads of a caller: an AE title for the file meta and the logs."""

    class _Requestor:
        def __init__(self, name: str) -> None:
            self.ae_title = name

    def __init__(self, name: str) -> None:
        self.requestor = self._Requestor(name)


class Credentials:
    """Basic users (name → sha256 of the password) and bearer tokens, read once at start."""

    def __init__(self, users_file: Path | None, tokens_file: Path | None) -> None:
        self.users: dict[str, str] = {}
        self.tokens: list[str] = []
        if users_file is not None:
            for line in users_file.read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.startswith("#"):
                    name, _, digest = line.strip().partition(":")
                    self.users[name] = digest.lower()
        if tokens_file is not None:
            self.tokens = [t.strip() for t in tokens_file.read_text(encoding="utf-8").splitlines()
                           if t.strip() and not t.startswith("#")]

    def who(self, authorization: str | None) -> str | None:
        """The caller's name, or None when the header does not authenticate."""
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            token = value.strip()
            return "token" if any(hmac.compare_digest(token, t) for t in self.tokens) else None
        if scheme.lower() == "basic":
            try:
                name, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            digest = hashlib.sha256(password.encode("utf-8")).hexdigest()
            known = self.users.get(name)
            return name if known is not None and hmac.compare_digest(digest, known) else None
        return None


class BadRequest(ValueError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_multipart(content_type: str, body: bytes) -> list[bytes]:
    """The parts of a ``multipart/related; type="application/dicom"`` body (their bytes).
    Raises :class:`BadRequest` (415 or 400) naming what is wrong."""
    header = BytesHeaderParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode("latin-1"))
    if header.get_content_type() != "multipart/related":
        raise BadRequest(415, f"the body must be multipart/related, got {header.get_content_type()}")
    kind = (header.get_param("type") or "application/dicom").lower()
    if kind != "application/dicom":
        raise BadRequest(415, f"the parts must be application/dicom, got {kind}")
    boundary = header.get_param("boundary")
    if not boundary:
        raise BadRequest(400, "multipart/related needs a boundary parameter, got none")
    delimiter = b"--" + str(boundary).encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise BadRequest(400, "the multipart body must hold parts and end with its closing boundary, got "
                              f"{max(len(chunks) - 2, 0)} parts and no end")
    parts = []
    for i, chunk in enumerate(chunks[1:-1], 1):
        if not chunk.startswith(b"\r\n") or not chunk.endswith(b"\r\n"):
            raise BadRequest(400, f"part {i} must sit between CRLF-delimited boundaries")
        head, sep, data = chunk[2:-2].partition(b"\r\n\r\n")
        if not sep:
            raise BadRequest(400, f"part {i} must have headers and a blank line, got none")
        part_type = BytesHeaderParser().parsebytes(head + b"\r\n\r\n").get_content_type()
        if head.strip() and part_type not in ("application/dicom", "text/plain"):
            raise BadRequest(415, f"part {i} must be application/dicom, got {part_type}")
        parts.append(data)
    return parts


def _meta(data: bytes) -> tuple[str, str, str, int]:
    """(transfer syntax, SOP class, SOP instance, offset of the data set) of a Part 10 file."""
    if data[128:132] != b"DICM" or data[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        raise ValueError("a part must be a DICOM Part 10 file (preamble, DICM, File Meta Information "
                         "Group Length), got none")
    end = 144 + struct.unpack_from("<I", data, 140)[0]
    meta = read_dataset(BytesIO(data[144:end]), False, True)
    return (str(meta.get("TransferSyntaxUID", "")), str(meta.get("MediaStorageSOPClassUID", "")),
            str(meta.get("MediaStorageSOPInstanceUID", "")), end)


class StowServer:
    """The STOW-RS endpoint; ``store(caller, chunks, ts, sop_instance, abstract_syntax=...)``
    is :meth:`Receiver.store`."""

    def __init__(self, bind: str, port: int, root: str, credentials: Credentials,
                 store: Callable[..., int], *, max_request_mb: float = 2048.0,
                 tls: tuple[Path, Path] | None = None) -> None:
        root = "/" + root.strip("/") if root.strip("/") else ""
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                server._post(self, root)

            def do_GET(self) -> None:  # noqa: N802
                self._plain(404, "only STOW-RS (POST) is served here\n")

            def _plain(self, code: int, text: str, headers: dict[str, str] | None = None) -> None:
                body = text.encode()
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                LOG.debug("stow-rs: " + format, *args)

        self.credentials = credentials
        self.store = store
        self.max_bytes = int(max_request_mb * 1024 * 1024)
        self.httpd = ThreadingHTTPServer((bind, port), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="stow-rs", daemon=True)

    def start(self) -> None:
        self._thread.start()
        LOG.info("STOW-RS on port %d", self.port)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _post(self, h: Any, root: str) -> None:
        address = h.client_address[0]
        path = h.path.split("?", 1)[0]
        if not path.startswith(root + "/"):
            return h._plain(404, f"STOW-RS is at {root}/studies, got {path}\n")
        m = _PATH.match(path[len(root):])
        if m is None:
            return h._plain(404, f"STOW-RS is at {root}/studies[/StudyInstanceUID], got {path}\n")
        who = self.credentials.who(h.headers.get("Authorization"))
        if who is None:
            AUDIT.warning("STOW-RS from %s refused: no or wrong credentials", address)
            h.close_connection = True
            return h._plain(401, "STOW-RS needs credentials (basic or bearer), got none that are valid\n",
                            {"WWW-Authenticate": 'Basic realm="pacsnode", Bearer'})
        try:
            length = int(h.headers.get("Content-Length", ""))
        except ValueError:
            h.close_connection = True
            return h._plain(411, "STOW-RS needs a Content-Length, got none\n")
        if length > self.max_bytes:
            h.close_connection = True
            return h._plain(413, f"a STOW-RS request must be at most {self.max_bytes} bytes, got {length}\n")
        body = h.rfile.read(length)
        try:
            parts = parse_multipart(h.headers.get("Content-Type", ""), body)
        except BadRequest as exc:
            AUDIT.warning("STOW-RS from %s (%s) refused: %s", address, who, exc)
            return h._plain(exc.code, f"{exc}\n")
        referenced, failed = [], []
        caller = _Caller(f"STOW-RS {who}"[:16])
        for data in parts:
            try:
                ts, sop_class, sop_instance, offset = _meta(data)
            except Exception as exc:
                failed.append(("", "", 0xC000))
                LOG.warning("STOW-RS part refused: %s", exc)
                continue
            if m.group(1):
                try:
                    study = header_of([memoryview(data)[offset:]], ts).study_uid
                except Exception:
                    study = m.group(1)  # the store below refuses it with its own status
                if study != m.group(1):
                    failed.append((sop_class, sop_instance, STATUS_SOP_CLASS_MISMATCH))
                    continue
            status = self.store(caller, [memoryview(data)[offset:]], ts, sop_instance,
                                abstract_syntax=sop_class)
            (referenced if status == STATUS_SUCCESS else failed).append((sop_class, sop_instance, status))
        code = 200 if not failed else 202 if referenced else 409
        answer: dict[str, Any] = {}
        if referenced:
            answer["00081199"] = {"vr": "SQ", "Value": [_ref(c, i) for c, i, _ in referenced]}
        if failed:
            answer["00081198"] = {"vr": "SQ", "Value": [
                {**_ref(c, i), "00081197": {"vr": "US", "Value": [s]}} for c, i, s in failed]}
        AUDIT.info("STOW-RS from %s (%s): %d stored, %d refused", address, who, len(referenced), len(failed))
        out = json.dumps(answer).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/dicom+json")
        h.send_header("Content-Length", str(len(out)))
        h.end_headers()
        h.wfile.write(out)


def _ref(sop_class: str, sop_instance: str) -> dict[str, Any]:
    ref: dict[str, Any] = {}
    if sop_class:
        ref["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_instance:
        ref["00081155"] = {"vr": "UI", "Value": [sop_instance]}
    return ref
