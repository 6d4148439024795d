"""The app (the process's service.name) on our counters: read from the meter provider's resource, written on
every point of the accounting and quota counters (what the app rules and reports group by on the direct-scrape
path, where nothing else names the app), never on the semconv histograms nor the span."""

from __future__ import annotations

import torch
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from otel_tokens import TokenUsageInstrumentor, names, usage_context
from otel_tokens.recording.sdk_readers import service_name
from tests.support import tiny_models as tm
from tests.support.telemetry import Telemetry, make_telemetry
from tests.support.tiny_models import forcing

COUNTERS = (names.METRIC_LLM_TOKEN_USAGE, names.METRIC_LLM_REQUESTS, names.METRIC_QUOTA_TOKENS)
HISTOGRAMS = (names.METRIC_TOKEN_USAGE, names.METRIC_OPERATION_DURATION)


def test_the_app_is_the_meter_providers_service_name_else_the_environments(monkeypatch):
    provider = MeterProvider(resource=Resource.create({"service.name": "kb-chat"}))
    assert service_name(provider) == "kb-chat"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "batch-summarize")
    assert service_name(object()) == "batch-summarize"  # not an SDK provider: the resource the SDK would build
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert service_name(object()) == "unknown_service:python"  # the SDK default: unknown_service:<executable>


def test_every_counter_point_carries_the_app_and_nothing_else_does():
    tel, tracer_provider, _ = make_telemetry()
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": "kb-chat"}))
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        with usage_context(user_id="alice", department="research"):
            tm.gpt2().generate(torch.tensor([[5]]), max_new_tokens=2, logits_processor=forcing(2, [11]))
        assert instrumentor.recorder.enforcement.app == "kb-chat"
    finally:
        instrumentor.uninstrument()
    metrics = Telemetry(tel.spans_exporter, reader).metrics()
    for metric in COUNTERS:
        assert {p.attributes.get(names.SERVICE_NAME) for p in metrics[metric]} == {"kb-chat"}, metric
    (quota,) = metrics[names.METRIC_QUOTA_TOKENS]
    assert dict(quota.attributes) == {names.USER_ID: "alice", names.DEPARTMENT: "research",
                                      names.SERVICE_NAME: "kb-chat"} and quota.value == 3
    for metric in HISTOGRAMS:  # semconv attributes only: the resource names the app there
        assert all(names.SERVICE_NAME not in p.attributes for p in metrics[metric]), metric
    (span,) = tel.spans()
    assert names.SERVICE_NAME not in span.attributes
