"""What the web-app tests do to an app under opentelemetry-instrument: start it (tests.support.web_app under
uvicorn, zero code), post a request with the proxy's headers, read the tokens its own Prometheus endpoint counted
per user and department."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from otel_tokens import names


def tokens_by_principal(metrics_url: str) -> dict[tuple[str, str], float]:
    """(user_id, department) -> tokens, from the app's metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    out: dict[tuple[str, str], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == names.PROM_LLM_TOKEN_USAGE:
                out[sample.labels["user_id"], sample.labels["department"]] += sample.value
    return dict(out)


def post(url: str, headers: list[tuple[str, str]]) -> int:
    """POST {} with the headers (a name may repeat); the status."""
    request = urllib.request.Request(url, data=b"{}", method="POST")
    for name, value in headers:
        request.add_header(name, value)
    return urllib.request.urlopen(request, timeout=30).status


ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def start_web_app(port: int, metrics_port: int, model_url: str, service: str,
                  settings: Mapping[str, str]) -> subprocess.Popen[str]:
    """tests.support.web_app under `opentelemetry-instrument uvicorn` on `port`, its metrics for Prometheus on
    `metrics_port`, configured by the OTEL_TOKENS_* `settings` only (no traces or logs exported; the official
    openai instrumentation off, so only ours counts). Output (stderr included) on its stdout pipe."""
    env = {**os.environ, "MODEL_URL": model_url, "OTEL_SERVICE_NAME": service,
           "OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "prometheus",
           "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1", "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port),
           "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "openai_v2", **settings}
    return subprocess.Popen([str(BIN / "opentelemetry-instrument"), str(BIN / "uvicorn"), "tests.support.web_app:app",
                             "--host", "127.0.0.1", "--port", str(port), "--no-access-log"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
