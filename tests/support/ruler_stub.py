"""A stand-in for a rule engine's read API (Prometheus's shape: /api/v1/alerts, /api/v1/rules,
/api/v1/status/runtimeinfo), for the guard's edge cases that a real Prometheus cannot be steered into
on demand (a start time, two shards, one silent). The real Prometheus and vmalert are in the e2e tests."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from tests.support.fixed_http import serve_get


class RulerStub:
    def __init__(self, up_for: float = 3600.0, alert_for: float = 15.0, interval: float = 10.0) -> None:
        self.firing: list[tuple[str, str]] = []  # (user, severity) of LLMUserTokenQuota
        self.started = time.time() - up_for
        self.alert_for, self.interval = alert_for, interval
        self.httpd = serve_get(lambda path: (json.dumps({"status": "success", "data": self.answer(
            path.split("?")[0])}).encode(), "application/json"))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

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
