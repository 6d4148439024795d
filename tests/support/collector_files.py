"""The shipped collector/ files as the config tests read them: paths, loaders, the example environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


COLLECTOR = ROOT / "collector"


RULES = COLLECTOR / "rules"


CONTRIB_VERSION = "0.136.0"


AM_EXAMPLE_ENV = {
    "SMTP_SMARTHOST": "mail.example.test:587", "SMTP_FROM": "alertmanager@example.test",
    "SMTP_AUTH_USERNAME": "", "SMTP_AUTH_PASSWORD": "", "SMTP_REQUIRE_TLS": "false",
    "ALERT_EMAIL_TO": "oncall@example.test", "ALERT_WEBHOOK_URL": "http://127.0.0.1:9/hook",
    "GUARD_URL": "http://127.0.0.1:9095", "GUARD_TOKEN_FILE": "/etc/alertmanager/guard-token",
}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _host(endpoint: str) -> str:
    return endpoint.split("://")[-1].rsplit(":", 1)[0]


def _otelcol() -> dict[str, Any]:
    return _load(COLLECTOR / "otelcol.yaml")


def _compose() -> dict[str, Any]:
    return _load(COLLECTOR / "docker-compose.yml")


def _prometheus() -> dict[str, Any]:
    return _load(COLLECTOR / "prometheus.yml")


def _rule_files() -> list[Path]:
    return sorted(RULES.glob("*.yml"))


def _am_template() -> str:
    return (COLLECTOR / "alertmanager.yml").read_text()


REQUIRED_SECRETS = {"OTEL_TOKENS_OTLP_TOKEN", "OTEL_TOKENS_GUARD_TOKEN", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
