"""The examples users copy, run as users run them: under `opentelemetry-instrument`, against a local
OpenAI-compatible server; and the demo in its fast mode (the same path as `make demo`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import console_output
from tests.support.binaries import require_binary
from tests.support.openai_server import OpenAIServer

pytestmark = pytest.mark.e2e  # every test here starts a server or a binary

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run_example(name: str, server: OpenAIServer) -> list[dict]:
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "local", "MODEL": "gpt-4",
           "OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "console", "OTEL_LOGS_EXPORTER": "none",
           "OTEL_SERVICE_NAME": "example"}
    result = subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable, f"examples/{name}"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return console_output.spans(result.stdout)


@pytest.mark.parametrize(("example", "users"), [("openai_client.py", ["alice", "alice"]),
                                                 ("langchain_chat.py", ["bob", "carol"])])
def test_openai_and_langchain_examples_record_attributed_usage(example, users):
    with OpenAIServer() as server:
        spans = _run_example(example, server)
    assert [s["attributes"]["user.id"] for s in spans] == users
    assert all(s["attributes"]["gen_ai.usage.output_tokens"] > 0 for s in spans)
    assert {s["name"] for s in spans} == {"chat gpt-4"}


def test_demo_fast_mode_shows_users_both_alerts_and_agreeing_counts():
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    result = subprocess.run([sys.executable, "examples/demo.py", "--fast"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "WARNING alert received" in out and "CRITICAL alert received" in out
    assert out.index("WARNING alert received") < out.index("CRITICAL alert received")
    for user in ("alice", "bob", "carol", "dave", "batch-bot"):
        assert user in out
    assert "they agree" in out
    # the quota guard refuses the runaway job once its critical alert fires, and keeps serving the others
    refused = out.index("GUARD after")
    assert "refused: user 'batch-bot' is over the 24h tokens quota" in out[refused:]
    # the guard reads Prometheus's alert state, which can be ahead of Alertmanager's notification
    assert out.index("WARNING alert received") < refused < out.index("served bob after the refusal")
