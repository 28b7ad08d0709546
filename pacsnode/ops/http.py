"""The node's small HTTP server: the status page, ``/status``, ``/metrics``, ``/healthz``, ``/readyz``.

A stdlib ``ThreadingHTTPServer`` on ``metrics.bind_address``:``metrics.port``, started only
when that port is not 0. Each request reads the ledger afresh; nothing is cached but the
model cards.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pacsnode.ledger import Ledger
from pacsnode.ops.metrics import Metrics, status_families
from pacsnode.ops.page import render_page
from pacsnode.ops.status import NodeFacts, readiness, status_snapshot

__all__ = ["StatusServer"]

LOG = logging.getLogger(__name__)


class StatusServer:
    """``/`` the status page, ``/status`` JSON, ``/metrics`` Prometheus text, ``/healthz``
    (liveness: 200 when the node runs), ``/readyz`` (200 "ready", or 503 with the reasons
    when unhealthy or degraded). ``destinations``: the configured destination names;
    ``facts``: version, start time, state dir, models and peers (:class:`NodeFacts`).
    ``port`` 0 takes a free port (see :attr:`port`)."""

    def __init__(self, bind: str, port: int, ledger: Ledger, metrics: Metrics,
                 healthy: Callable[[], bool], *, destinations: Sequence[str] = (),
                 facts: NodeFacts | None = None) -> None:
        facts = facts or NodeFacts()
        dests = tuple(destinations)

        def snapshot() -> dict[str, Any]:
            return status_snapshot(ledger, dests, facts=facts)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (stdlib name)
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/healthz":
                        ok = healthy()
                        self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"unhealthy\n")
                    elif path == "/readyz":
                        code, text = readiness(healthy(), snapshot()["reasons"])
                        self._send(code, "text/plain; charset=utf-8", text.encode())
                    elif path == "/metrics":
                        body = metrics.render(status_families(snapshot())).encode()
                        self._send(200, "text/plain; version=0.0.4; charset=utf-8", body)
                    elif path == "/status":
                        body = json.dumps(snapshot(), indent=2).encode()
                        self._send(200, "application/json", body)
                    elif path == "/":
                        page = render_page(snapshot(), healthy(), metrics.snapshot()["timings"])
                        self._send(200, "text/html; charset=utf-8", page.encode())
                    else:
                        self._send(404, "text/plain", b"not found\n")
                except Exception:
                    LOG.exception("status page failed")
                    self._send(500, "text/plain", b"error\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                LOG.debug("http: " + format, *args)

        self.httpd = ThreadingHTTPServer((bind, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="status-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
