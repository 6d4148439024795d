"""A graceful stop exports everything counted (issue 19): SIGTERM to a real uvicorn and a real gunicorn
under `opentelemetry-instrument`, a 60 s export interval, tokens counted at a real OTLP/HTTP endpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.openai_server import OpenAIServer
from tests.support.prometheus_stack import free_port, wait_http
from tests.support.reliability_app import OTLPBackend

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _agent_env(model: OpenAIServer, otlp: OTLPBackend) -> dict[str, str]:
    return {**os.environ, "MODEL_URL": model.base_url, "OTEL_SERVICE_NAME": "stop-test",
            "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp", "OTEL_LOGS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "60000", "OTEL_TOKENS_TRUSTED_HEADERS": "user.id=X-Forwarded-User"}


def _chat(port: int, user: str, calls: int) -> None:
    for _ in range(calls):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/chat", data=b"{}", method="POST",
                                         headers={"X-Forwarded-User": user})
        assert urllib.request.urlopen(request, timeout=30).status == 200


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_sigterm_exports_every_token_counted(server):
    with OpenAIServer() as model, OTLPBackend() as otlp:
        port = free_port()
        if server == "uvicorn":
            command = [str(BIN / "uvicorn"), "tests.support.web_app:app", "--host", "127.0.0.1", "--port", str(port)]
        else:  # one worker of uvicorn's ASGI worker class, as FastAPI apps deploy on gunicorn
            command = [str(BIN / "gunicorn"), "-w", "1", "-k", "uvicorn.workers.UvicornWorker", "-b",
                       f"127.0.0.1:{port}", "tests.support.web_app:app"]
        process = subprocess.Popen([str(BIN / "opentelemetry-instrument"), *command], cwd=ROOT,
                                   env=_agent_env(model, otlp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/docs")
            _chat(port, "alice", 3)
            _chat(port, "bob", 2)
            assert otlp.cumulative("llm.token.usage", "user.id") == {}  # nothing exported yet (60 s interval)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            output = process.communicate(timeout=30)[0]
            stop = time.monotonic() - started
        finally:
            if process.poll() is None:
                process.kill()
        totals = otlp.cumulative("llm.token.usage", "user.id")
        assert set(totals) == {"alice", "bob"}, output[-3000:]
        assert totals["alice"] * 2 == totals["bob"] * 3 and totals["alice"] > 0  # 3 and 2 identical calls
        assert stop < 10, f"stopping took {stop:.1f} s"
        assert process.returncode in (0, -signal.SIGTERM)  # the server's own way of ending, unchanged


CHAINED = """
import os, signal, sys
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from otel_tokens import TokenUsageInstrumentor

class Provider:
    def force_flush(self, timeout_millis=0):
        print("flushed", flush=True)
        return True

signal.signal(signal.SIGTERM, lambda signum, frame: (print("app handler", flush=True), sys.exit(3)))
TokenUsageInstrumentor().instrument(meter_provider=MeterProvider(), tracer_provider=TracerProvider())
from otel_tokens import graceful_stop
graceful_stop._flushers[:] = [Provider().force_flush]
os.kill(os.getpid(), signal.SIGTERM)
"""


def test_the_app_s_own_handler_still_runs_after_the_flush():
    result = subprocess.run([sys.executable, "-c", CHAINED], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["flushed", "app", "handler"] and result.returncode == 3, result.stderr


def test_a_delta_reader_is_warned_about_at_start(caplog):
    from opentelemetry.sdk.metrics import Counter, MeterProvider, ObservableCounter
    from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    from otel_tokens import TokenUsageInstrumentor

    for temporality, warned in ((AggregationTemporality.DELTA, True), (AggregationTemporality.CUMULATIVE, False)):
        caplog.clear()
        reader = InMemoryMetricReader(preferred_temporality={Counter: temporality, ObservableCounter: temporality})
        instrumentor = TokenUsageInstrumentor()
        instrumentor.instrument(meter_provider=MeterProvider(metric_readers=[reader]),
                                tracer_provider=TracerProvider())
        instrumentor.uninstrument()
        assert any("delta temporality" in r.getMessage() and "TEMPORALITY_PREFERENCE=cumulative" in r.getMessage()
                   for r in caplog.records) is warned
