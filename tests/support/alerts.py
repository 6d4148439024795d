"""Alert payloads as Alertmanager's webhook and the rulers' /api/v1/alerts carry them."""

from __future__ import annotations


def alert(name: str, severity: str, status: str = "firing", **labels: str) -> dict:
    return {"status": status, "labels": {"alertname": name, "severity": severity, "quota": "tokens",
                                         "window": "24h", **labels},
            "annotations": {"usage": "1.1k tokens", "limit": "1k tokens", "percent": "110%"}}
