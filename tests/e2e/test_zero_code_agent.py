"""Zero code: apps run under `opentelemetry-instrument` in their own process, the instrumentor loaded by the agent."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from otel_tokens import names
from tests.support import console_output
from tests.support import tiny_models as tm
from tests.support.tiny_models import forcing

ROOT = Path(__file__).resolve().parents[2]


BIN = Path(sys.executable).parent
def test_a_failure_in_our_code_never_reaches_the_app(telemetry, monkeypatch, caplog):
    from otel_tokens.integrations import transformers as integration

    def broken(*args, **kwargs):
        raise ZeroDivisionError("bug in otel-tokens")

    monkeypatch.setattr(integration, "count_generate", broken)
    model = tm.gpt2()
    with caplog.at_level(logging.WARNING, logger="otel_tokens"):
        for _ in range(3):
            out = model.generate(torch.tensor([[5, 6]]), max_new_tokens=2, logits_processor=forcing(2, [11, 12]))
            assert out.tolist() == [[5, 6, 11, 12]]
    assert len(telemetry.spans()) == 3  # the spans still end
    assert telemetry.metrics()[names.METRIC_LLM_REQUESTS][0].value == 3
    internal = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert len(internal) == 1  # one line per condition, not per call


def _run_agent(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OTEL_SERVICE_NAME": "agent-test", "OTEL_TRACES_EXPORTER": "console",
           "OTEL_METRICS_EXPORTER": "console", "OTEL_LOGS_EXPORTER": "none", **extra_env}
    env.pop("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", None)
    env.update(extra_env)
    return subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable,
                           str(ROOT / "examples" / "transformers_app.py")],
                          env=env, capture_output=True, text=True, timeout=300, check=True)
def test_opentelemetry_instrument_exports_spans_and_metrics():
    result = _run_agent({})
    spans = console_output.spans(result.stdout)
    got = [(s["attributes"]["user.id"], s["attributes"]["department"], s["attributes"]["gen_ai.usage.input_tokens"],
            s["attributes"]["gen_ai.usage.output_tokens"]) for s in spans]
    assert got == [("alice", "support", 5, 8), ("bob", "research", 2, 16), ("alice", "support", 3, 4)]
    assert {s["name"] for s in spans} == {"text_completion tiny-gpt2-demo"}
    assert all(s["kind"] == "SpanKind.INTERNAL" for s in spans)
    points = console_output.metric_points(result.stdout, names.METRIC_LLM_TOKEN_USAGE)
    totals = {(p["attributes"]["user.id"], p["attributes"]["gen_ai.token.type"]): p["value"] for p in points}
    assert totals == {("alice", "input"): 8, ("alice", "output"): 12, ("bob", "input"): 2, ("bob", "output"): 16}
    histogram = console_output.metric_points(result.stdout, names.METRIC_TOKEN_USAGE)
    assert sum(p["count"] for p in histogram) == 6
    assert histogram[0]["explicit_bounds"] == list(names.TOKEN_USAGE_BUCKETS)
def test_disabled_instrumentations_variable_turns_it_off():
    result = _run_agent({"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "otel_tokens"})
    assert "bob" in result.stdout  # the app ran
    assert console_output.spans(result.stdout) == []
    assert console_output.metric_points(result.stdout, names.METRIC_LLM_TOKEN_USAGE) == []
@pytest.mark.parametrize("module", ["openai", "transformers", "torch", "tiktoken"])
def test_importing_the_package_imports_no_client_library(module):
    code = f"import sys, otel_tokens; otel_tokens.TokenUsageInstrumentor; assert {module!r} not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
def test_instrument_without_an_sdk_says_nothing_will_be_exported_and_the_fix():
    """`TokenUsageInstrumentor().instrument()` with no SDK configured showed nothing and said nothing."""
    code = ("import logging; logging.basicConfig(); from otel_tokens import TokenUsageInstrumentor; "
            "TokenUsageInstrumentor().instrument()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "no OpenTelemetry SDK is configured, so nothing is exported" in result.stderr
    assert "pip install 'otel-tokens[otlp]'" in result.stderr
