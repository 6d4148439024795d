"""The instrumentor's contract: entry point, dependency check, uninstrument, never breaking the app."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from importlib.metadata import distribution, entry_points
from pathlib import Path

import pytest
import torch
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from otel_tokens import TokenUsageInstrumentor, names
from otel_tokens.instrumentor import INSTRUMENTS_ANY
from tests.support import console_output
from tests.support import tiny_models as tm
from tests.support.telemetry import make_telemetry
from tests.support.tiny_models import forcing

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_entry_point_and_instruments_any_extra_agree():
    (ep,) = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "otel_tokens"]
    assert ep.load() is TokenUsageInstrumentor
    requires = distribution("otel-tokens").requires or []
    any_extra = sorted(r.split(";")[0].replace(" ", "") for r in requires if "instruments-any" in r)
    assert any_extra == sorted(r.replace(" ", "") for r in INSTRUMENTS_ANY)


def test_uninstrument_restores_generate_exactly():
    from transformers.generation.utils import GenerationMixin

    original = GenerationMixin.__dict__["generate"]
    instrumentor = TokenUsageInstrumentor()
    tel, tracer_provider, meter_provider = make_telemetry()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    assert GenerationMixin.__dict__["generate"] is not original
    instrumentor.uninstrument()
    assert GenerationMixin.__dict__["generate"] is original
    tm.gpt2().generate(torch.tensor([[5]]), max_new_tokens=1)
    assert tel.spans() == []
    # and instrumenting again works
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        tm.gpt2().generate(torch.tensor([[5]]), max_new_tokens=1)
        assert len(tel.spans()) == 1
    finally:
        instrumentor.uninstrument()
    assert GenerationMixin.__dict__["generate"] is original


def test_metrics_are_recorded_when_the_span_is_not_sampled():
    tel, tracer_provider, meter_provider = make_telemetry(sampler=ALWAYS_OFF)
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        tm.gpt2().generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, logits_processor=forcing(3, [11, 12]))
    finally:
        instrumentor.uninstrument()
    assert tel.spans() == []
    assert tel.token_totals(names.GEN_AI_TOKEN_TYPE) == {("input",): 3, ("output",): 2}
    assert tel.metrics()[names.METRIC_OPERATION_DURATION][0].count == 1


@pytest.mark.e2e
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


def test_suppressed_instrumentation_records_nothing(telemetry):
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        tm.gpt2().generate(torch.tensor([[5]]), max_new_tokens=1)
    assert telemetry.spans() == []


def _run_agent(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OTEL_SERVICE_NAME": "agent-test", "OTEL_TRACES_EXPORTER": "console",
           "OTEL_METRICS_EXPORTER": "console", "OTEL_LOGS_EXPORTER": "none", **extra_env}
    env.pop("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", None)
    env.update(extra_env)
    return subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable,
                           str(ROOT / "examples" / "transformers_app.py")],
                          env=env, capture_output=True, text=True, timeout=300, check=True)


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_disabled_instrumentations_variable_turns_it_off():
    result = _run_agent({"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "otel_tokens"})
    assert "bob" in result.stdout  # the app ran
    assert console_output.spans(result.stdout) == []
    assert console_output.metric_points(result.stdout, names.METRIC_LLM_TOKEN_USAGE) == []


@pytest.mark.e2e
@pytest.mark.parametrize("module", ["openai", "transformers", "torch", "tiktoken"])
def test_importing_the_package_imports_no_client_library(module):
    code = f"import sys, otel_tokens; otel_tokens.TokenUsageInstrumentor; assert {module!r} not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_spans_and_metrics_name_the_semconv_schema(telemetry):
    from otel_tokens.recording.recorder import Recorder

    recorder = TokenUsageInstrumentor().recorder
    assert isinstance(recorder, Recorder)
    recorder.finish(recorder.begin(names.OPERATION_CHAT, "openai", "m"))
    assert telemetry.span().instrumentation_scope.schema_url == names.SCHEMA_URL == (
        "https://opentelemetry.io/schemas/1.41.0")
    scopes = [sm.scope for rm in telemetry.reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics]
    assert {s.schema_url for s in scopes if s.name == names.INSTRUMENTATION_SCOPE} == {names.SCHEMA_URL}


@pytest.mark.e2e
def test_instrument_without_an_sdk_says_nothing_will_be_exported_and_the_fix():
    """`TokenUsageInstrumentor().instrument()` with no SDK configured showed nothing and said nothing."""
    code = ("import logging; logging.basicConfig(); from otel_tokens import TokenUsageInstrumentor; "
            "TokenUsageInstrumentor().instrument()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "no OpenTelemetry SDK is configured, so nothing is exported" in result.stderr
    assert "pip install 'otel-tokens[otlp]'" in result.stderr


def test_doctor_names_the_agent_s_protocol_and_a_missing_exporter(monkeypatch):
    from otel_tokens.ops.doctor import report

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "no_such_exporter")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    text = report()
    assert "OTLP protocol under opentelemetry-instrument       grpc (opentelemetry-distro's default)" in text
    assert "metrics exporter the agent loads                   otlp_proto_grpc\n" in text  # [otlp] brings it
    assert "logs exporter the agent loads                      no_such_exporter MISSING" in text
    assert "traces exporter the agent loads                    none" in text
    assert "opentelemetry-instrument would fail to configure the SDK" in text and "OTEL_LOGS_EXPORTER=none" in text
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert "otlp_proto_http" in report() and "OTEL_EXPORTER_OTLP_PROTOCOL)" in report()
