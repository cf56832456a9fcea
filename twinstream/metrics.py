"""A small HTTP endpoint for Prometheus metrics and a JSON health check, for any long-running
twinstream process (workers; the API may reuse it).

``GET /metrics`` is the Prometheus text format of a registry; ``GET /health`` is the JSON of a
callback, with status 200 when its ``status`` is ``ok`` and 503 otherwise.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from twinstream.errors import ConfigError


class MetricsServer:
    def __init__(self, port: int, registry: CollectorRegistry, health: Callable[[], dict],
                 host: str = "0.0.0.0"):
        handler = _handler(registry, health)
        try:
            self.server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on port {port}: {exc.strerror or exc} "
                              "(TWINSTREAM_WORKER_METRICS_PORT / --metrics-port)") from exc
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics",
                                        daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(registry: CollectorRegistry, health: Callable[[], dict]):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path in ("/health", "/healthz"):
                state = health()
                code = 200 if state.get("status") == "ok" else 503
                self._send(code, "application/json", json.dumps(state).encode())
            else:
                self._send(404, "text/plain", b"try /metrics or /health\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:  # scrapes every few seconds: not worth a line
            pass

    return Handler
