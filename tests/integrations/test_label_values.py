"""Every label value the package puts on a metric is valid text, whatever a server or a caller sent: one
lone surrogate (a server's JSON `"model": "gpt-4o-mini\\ud800"`, a model string taken from a user) used to
make the Prometheus exporter answer 500 for every later scrape of the process."""

from __future__ import annotations

import urllib.request

import openai
import pytest

from otel_tokens import TokenUsageInstrumentor, usage_context
from otel_tokens.config.settings import Settings
from tests.support.openai_server import OpenAIServer


def test_metrics_stay_200_with_a_lone_surrogate_in_every_label_value():
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import start_http_server

    reader = PrometheusMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    instrumentor = TokenUsageInstrumentor()
    # the provider name from the operator's `providers` map, the rest from the server and the caller
    instrumentor.instrument(tracer_provider=TracerProvider(), meter_provider=meter_provider,
                            settings=Settings(providers={"127.0.0.1": "local\udfff"}, builtin_prices=False))
    http, _thread = start_http_server(0, addr="127.0.0.1")
    try:
        with OpenAIServer(response_model="gpt-4o-mini\ud800") as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            with usage_context(user_id="alice\udc80", department="sales\ud801"):
                # a model string from a user: the SDK itself cannot send it, the failed call is recorded
                with pytest.raises(UnicodeEncodeError):
                    client.chat.completions.create(model="qwen\udc81", messages=[{"role": "user", "content": "hi"}])
                client.chat.completions.create(model="qwen", messages=[{"role": "user", "content": "hi"}])
                stream = client.chat.completions.create(model="qwen", stream=True,
                                                        messages=[{"role": "user", "content": "hi"}])
                for _ in stream:
                    pass
        url = f"http://127.0.0.1:{http.server_address[1]}/metrics"
        for _ in range(2):  # and the next scrape too
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200
                text = response.read().decode("utf-8")
        for escaped in ("gpt-4o-mini\\\\ud800", "qwen\\\\udc81", "local\\\\udfff", "alice\\\\udc80", "sales\\\\ud801"):
            assert escaped in text, escaped  # the value kept, readably, as its escape
        for metric in ("llm_token_usage_total", "llm_requests_total", "gen_ai_client_token_usage_bucket",
                       "gen_ai_client_operation_duration_seconds_bucket",
                       "gen_ai_client_operation_time_to_first_chunk_seconds_bucket"):
            assert any(line.startswith(metric + "{") and "\\\\u" in line for line in text.splitlines()), metric
    finally:
        instrumentor.uninstrument()
        http.shutdown()
        meter_provider.shutdown()
