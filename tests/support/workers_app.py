"""A WSGI app served by gunicorn with several workers, as Langchain-Chatchat deploys: each worker
instruments itself after the fork and serves its own metrics (port = base + the worker's age, so a
restarted worker is a new target), and every request is one attributed generate of 50 tokens.

    METRICS_BASE_PORT=9500 gunicorn -w 2 -c tests/support/workers_app.py tests.support.workers_app:app
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs

TOKENS_PER_REQUEST = 50  # 10 prompt + 40 generated
_model: Any = None


def post_fork(server: Any, worker: Any) -> None:  # gunicorn hook: runs in each worker
    # gunicorn execs this file as its config, a different module object from the app's
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import start_http_server

    import tests.support.workers_app as app_module
    from otel_tokens import TokenUsageInstrumentor
    from otel_tokens.config.settings import Settings
    from tests.support import tiny_models as tm

    TokenUsageInstrumentor().instrument(tracer_provider=TracerProvider(),
                                        meter_provider=MeterProvider(metric_readers=[PrometheusMetricReader()]),
                                        settings=Settings(builtin_prices=False))
    start_http_server(int(os.environ["METRICS_BASE_PORT"]) + worker.age, addr="127.0.0.1")
    app_module._model = tm.gpt2()


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    import torch

    from otel_tokens import usage_context
    from tests.support.tiny_models import forcing

    query = parse_qs(environ.get("QUERY_STRING", ""))
    with usage_context(user_id=query["user"][0], department=query.get("department", ["eng"])[0]):
        _model.generate(torch.full((1, 10), 5), max_new_tokens=40, min_new_tokens=40,
                        logits_processor=forcing(10, [11]))
    start_response("200 OK", [("content-type", "text/plain")])
    return [str(os.getpid()).encode()]
