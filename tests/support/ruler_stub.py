"""A stand-in for a rule engine's read API (Prometheus's shape: /api/v1/alerts, /api/v1/rules,
/api/v1/status/runtimeinfo), for the guard's edge cases that a real Prometheus cannot be steered into
on demand (a start time, two shards, one silent). The real Prometheus and vmalert are in the e2e tests."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RulerStub:
    def __init__(self, up_for: float = 3600.0, alert_for: float = 15.0, interval: float = 10.0) -> None:
        self.firing: list[tuple[str, str]] = []  # (user, severity) of LLMUserTokenQuota
        self.started = time.time() - up_for
        self.alert_for, self.interval = alert_for, interval
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"status": "success", "data": owner.answer(self.path.split("?")[0])}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, path: str) -> Any:
        if path == "/api/v1/alerts":
            return {"alerts": [{"state": "firing", "labels": {
                "alertname": "LLMUserTokenQuota", "user_id": user, "severity": severity, "window": "24h",
                "quota": "tokens"}, "annotations": {}} for user, severity in self.firing]}
        if path == "/api/v1/rules":
            return {"groups": [{"name": "quota", "interval": self.interval, "rules": [
                {"type": "alerting", "name": "LLMUserTokenQuota", "duration": self.alert_for}]}]}
        start = datetime.fromtimestamp(self.started, timezone.utc).isoformat().replace("+00:00", "Z")
        return {"startTime": start}

    def restart(self) -> None:
        """As a restarted ruler looks: just started, nothing firing yet."""
        self.started, self.firing = time.time(), []

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
