"""The instrumentor's contract: entry point, dependency check, uninstrument, never breaking the app."""

from __future__ import annotations

from importlib.metadata import distribution, entry_points

import torch
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from otel_tokens import TokenUsageInstrumentor, names
from otel_tokens.instrumentor import INSTRUMENTS_ANY
from tests.support import tiny_models as tm
from tests.support.telemetry import make_telemetry
from tests.support.tiny_models import forcing


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


def test_suppressed_instrumentation_records_nothing(telemetry):
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        tm.gpt2().generate(torch.tensor([[5]]), max_new_tokens=1)
    assert telemetry.spans() == []


def test_spans_and_metrics_name_the_semconv_schema(telemetry):
    from otel_tokens.recording.recorder import Recorder

    recorder = TokenUsageInstrumentor().recorder
    assert isinstance(recorder, Recorder)
    recorder.finish(recorder.begin(names.OPERATION_CHAT, "openai", "m"))
    assert telemetry.span().instrumentation_scope.schema_url == names.SCHEMA_URL == (
        "https://opentelemetry.io/schemas/1.41.0")
    scopes = [sm.scope for rm in telemetry.reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics]
    assert {s.schema_url for s in scopes if s.name == names.INSTRUMENTATION_SCOPE} == {names.SCHEMA_URL}


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
