"""OHIF's prebuilt viewer served on loopback against a PACS's DICOMweb, with nothing but the stdlib.

``OhifServer(dist, dicomweb_url)`` serves the OHIF dist (``npm pack @ohif/app@3.13.2`` carries it
in ``package/dist``; ``scripts/setup.sh`` unpacks it into ``tests/viewers/ohif-dist``), an
``app-config.js`` of its own whose one data source is ``/dicom-web`` on the same origin, and that
path as a proxy to the PACS's DICOMweb root (Orthanc's plugin: ``http://127.0.0.1:8042/dicom-web``),
so the browser never makes a cross-origin request. Every other path is the single-page app.
:meth:`OhifServer.study_url` opens a study with a series (e.g. the SEG) on display.
"""

from __future__ import annotations

import base64
import mimetypes
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pacsnode.errors import PacsnodeError

__all__ = ["OHIF_VERSION", "OhifServer", "find_ohif_dist"]

OHIF_VERSION = "3.13.2"
_ENV = "PACSNODE_OHIF_DIST"
_INSTALL = (f"npm pack @ohif/app@{OHIF_VERSION} && tar xzf ohif-app-{OHIF_VERSION}.tgz package/dist, then pass "
            f"--ohif-dist package/dist or set {_ENV}; in a checkout, scripts/setup.sh puts it in tests/viewers/ohif-dist")

APP_CONFIG = """window.config = {
  name: 'pacsnode',
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  showLoadingIndicator: true,
  showCPUFallbackMessage: false,
  showWarningMessageForCrossOrigin: false,
  strictZSpacingForVolumeViewport: true,
  disableConfirmationPrompts: true,
  maxNumberOfWebWorkers: 2,
  defaultDataSourceName: 'pacs',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'pacs',
    configuration: {
      friendlyName: 'PACS (DICOMweb through pacsnode)',
      name: 'pacs',
      wadoUriRoot: '/dicom-web',
      qidoRoot: '/dicom-web',
      wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true, relativeResolution: 'studies' },
    },
  }],
};
"""


def find_ohif_dist(explicit: str | Path | None = None) -> Path:
    """The OHIF dist to serve: ``explicit``, else $PACSNODE_OHIF_DIST, else ./tests/viewers/ohif-dist."""
    candidates = [Path(explicit)] if explicit else []
    if not explicit and os.environ.get(_ENV):
        candidates.append(Path(os.environ[_ENV]))
    if not candidates:
        candidates.append(Path.cwd() / "tests" / "viewers" / "ohif-dist")
    for path in candidates:
        if (path / "index.html").is_file() and (path / "app-config.js").is_file():
            return path.resolve()
    raise PacsnodeError(f"the viewer needs OHIF {OHIF_VERSION}'s prebuilt dist (a folder with index.html and "
                        f"app-config.js), got none at {candidates[0]}: {_INSTALL}")


class OhifServer:
    """Serve ``dist`` and proxy ``/dicom-web/*`` to ``dicomweb_url`` on 127.0.0.1:``port`` (0: any free port)."""

    def __init__(self, dist: str | Path, dicomweb_url: str, port: int = 0, *, host: str = "127.0.0.1",
                 username: str | None = None, password: str | None = None) -> None:
        self.dist = find_ohif_dist(dist)
        self.dicomweb_url = dicomweb_url.rstrip("/")
        auth = None
        if username is not None:
            auth = "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()
        self._httpd = ThreadingHTTPServer((host, port), _handler(self.dist, self.dicomweb_url, auth))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def study_url(self, study_uid: str, series_uid: str | None = None) -> str:
        query = {"StudyInstanceUIDs": study_uid}
        if series_uid:
            query["initialSeriesInstanceUID"] = series_uid
        return f"{self.url}/viewer?{urllib.parse.urlencode(query)}"

    def start(self) -> OhifServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ohif-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> OhifServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler(dist: Path, upstream: str, auth: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
            pass

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            path = urllib.parse.urlsplit(self.path).path
            if path == "/dicom-web" or path.startswith("/dicom-web/"):
                self._proxy()
            elif path == "/app-config.js":
                self._send(200, APP_CONFIG.encode(), "application/javascript")
            else:
                self._static(path)

        def _static(self, path: str) -> None:
            target = (dist / urllib.parse.unquote(path).lstrip("/")).resolve()
            if not target.is_file() or dist not in target.parents:
                target = dist / "index.html"  # the single-page app's routes (/viewer, /)
            kind = "application/wasm" if target.suffix == ".wasm" else (
                mimetypes.guess_type(target.name)[0] or "application/octet-stream")
            self._send(200, target.read_bytes(), kind)

        def _proxy(self) -> None:
            url = upstream + self.path[len("/dicom-web"):]
            # Orthanc writes bulk data URIs with the request's Host: keep them on this origin
            req = urllib.request.Request(url, headers={k: v for k, v in (
                ("Accept", self.headers.get("Accept")), ("Authorization", auth), ("Host", self.headers.get("Host")),
            ) if v})
            try:
                with urllib.request.urlopen(req, timeout=120) as resp:
                    self._send(resp.status, resp.read(), resp.headers.get("Content-Type", "application/octet-stream"))
            except urllib.error.HTTPError as exc:
                self._send(exc.code, exc.read(), exc.headers.get("Content-Type", "text/plain"))
            except (urllib.error.URLError, OSError) as exc:
                self._send(502, f"the PACS's DICOMweb at {upstream} did not answer: {exc}".encode(), "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

    return Handler
