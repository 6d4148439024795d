"""An app for the per-app report test: the real package in its own process, charged as the app that
OTEL_SERVICE_NAME names (read through the SDK's resource, as `opentelemetry-instrument --service_name` sets
it), metrics served by the SDK's Prometheus exporter, chat completions against a local OpenAI-compatible
server (OPENAI_BASE_URL) that generates as many tokens as asked and reports its usage.

`python -m tests.support.apps_app PORT [--no-app]`: --no-app records no app (Settings(app="")), as the
package did before it wrote service.name on its points: the report's pre-upgrade data.

Prints `ready`; then reads stdin lines `USER DEPARTMENT MODEL CALLS MAX_TOKENS` (CALLS chat completions of
PROMPT, each answered with MAX_TOKENS tokens) and prints `done` after each.
"""

from __future__ import annotations

import sys

import openai
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import start_http_server

from otel_tokens import TokenUsageInstrumentor, usage_context
from otel_tokens.config.settings import Settings

# USD per million tokens: the knowledge-base model is dear, the batch model cheap (more tokens, less money)
PRICES = ({"match": "kb-large", "provider": "openai", "currency": "USD", "input": 30, "output": 60},
          {"match": "bulk-small", "provider": "openai", "currency": "USD", "input": 1, "output": 2})
PRICE_PER_TOKEN = {"kb-large": (30e-6, 60e-6), "bulk-small": (1e-6, 2e-6)}  # (input, output)
PROMPT = [{"role": "user", "content": "Summarize the ticket, please."}]


def main() -> None:
    port = int(sys.argv[1])
    legacy = "--no-app" in sys.argv[2:]
    reader = PrometheusMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], resource=Resource.create())  # OTEL_SERVICE_NAME
    settings = Settings(prices=PRICES, builtin_prices=False, app="" if legacy else None)
    TokenUsageInstrumentor().instrument(tracer_provider=TracerProvider(), meter_provider=meter_provider,
                                        settings=settings)
    start_http_server(port, addr="127.0.0.1")
    client = openai.OpenAI(api_key="local", max_retries=0)
    print("ready", flush=True)
    for line in sys.stdin:
        user, department, model, calls, max_tokens = line.split()
        with usage_context(user_id=user, department=department):
            for _ in range(int(calls)):
                client.chat.completions.create(model=model, messages=PROMPT, max_tokens=int(max_tokens))
        print("done", flush=True)


if __name__ == "__main__":
    main()
