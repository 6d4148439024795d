"""`otel-tokens guard`: the quota-state endpoint, a sidecar beside Alertmanager.

Alertmanager posts its webhooks to POST /alertmanager; in-app guards poll GET /state (see
otel_tokens/guard.py for the in-app half, which parses the same payloads).
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..guard import GuardState


def serve(host: str, port: int, state: GuardState | None = None) -> ThreadingHTTPServer:
    """The guard endpoint: POST /alertmanager (webhook), GET /state, GET /-/ready."""
    state = state or GuardState()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                payload = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                state.update(payload)
            except (ValueError, AttributeError, TypeError) as error:
                self._reply(400, {"error": f"not an Alertmanager webhook payload: {error}"})
                return
            self._reply(200, {"status": "ok"})

        def do_GET(self) -> None:
            if self.path.startswith("/state"):
                self._reply(200, state.snapshot())
            else:
                self._reply(200, {"status": "ready"})

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.state = state  # type: ignore[attr-defined]
    return server
