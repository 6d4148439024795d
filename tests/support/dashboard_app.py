"""An app for the dashboard test: the real package, metrics served by the SDK's Prometheus exporter (no collector
binary runs here), traffic from two tiny transformers models and an OpenAI-style client, for several users and
departments.

Every round, per (user, department) in USERS: plain `generate` calls on both tiny models (counted), a streamed
`generate` on each (time to first chunk), a `generate` that raises (error.type), and a chat completion plus a
streamed one against a local OpenAI-compatible server that reports no usage, for a model with no tokenizer
(`estimated` counts, provider `openai`). Everything is priced (inline prices in USD), so every accounting metric,
histogram and label the dashboards use is produced by the package itself.

Protocol: prints `ready PORT`; then each stdin line `round` runs one round and prints `done`.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import start_http_server
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

from otel_tokens import TokenUsageInstrumentor, usage_context
from otel_tokens.config.settings import AlertSettings, GuardSettings, Settings
from tests.support import tiny_models as tm
from tests.support.openai_server import OpenAIServer
from tests.support.tiny_models import forcing

SERVICE_NAME = "dashboard-app"
# (user, department, plain calls per model per round): different totals per user and department.
USERS: tuple[tuple[str, str, int], ...] = (
    ("alice", "research", 3),
    ("bob", "research", 1),
    ("carol", "support", 2),
    ("dave", "sales", 1),
)
OPENAI_MODEL = "acme-chat"  # no tokenizer mapped and not an OpenAI name: counts are `estimated`
PRICES = (
    {"match": "*", "provider": "transformers", "currency": "USD", "input": 50, "output": 200},
    {"match": OPENAI_MODEL, "provider": "openai", "currency": "USD", "input": 100, "output": 300},
)
PROMPT_TOKENS = 10
NEW_TOKENS = 20


class GenerationError(RuntimeError):
    """What the failing generate raises: becomes error.type."""


class _Raise(LogitsProcessor):
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        raise GenerationError("generation failed")


class _Collect(BaseStreamer):
    """A streamer that keeps what generate pushes (the prompt first, then one chunk per step)."""

    def __init__(self) -> None:
        self.chunks: list[Any] = []

    def put(self, value: Any) -> None:
        self.chunks.append(value)

    def end(self) -> None:
        pass


def run_round(models: list[Any], client: Any) -> None:
    prompt = torch.full((1, PROMPT_TOKENS), 5)
    for user, department, calls in USERS:
        with usage_context(user_id=user, department=department, session_id=f"{user}-session"):
            for model in models:
                for _ in range(calls):
                    model.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                   logits_processor=forcing(PROMPT_TOKENS, [11]))
                streamer = _Collect()
                model.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, streamer=streamer,
                               logits_processor=forcing(PROMPT_TOKENS, [11]))
                assert len(streamer.chunks) == NEW_TOKENS + 1
            try:
                models[0].generate(prompt, max_new_tokens=NEW_TOKENS, logits_processor=LogitsProcessorList([_Raise()]))
            except GenerationError:
                pass
            else:
                raise AssertionError("the failing generate did not raise")
            messages = [{"role": "user", "content": f"How many tokens did {user} use today?"}]
            client.chat.completions.create(model=OPENAI_MODEL, messages=messages)
            with client.chat.completions.create(model=OPENAI_MODEL, messages=messages, stream=True) as stream:
                for _ in stream:
                    pass


def main() -> None:
    import openai

    port = int(sys.argv[1])
    reader = PrometheusMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": SERVICE_NAME}))
    TokenUsageInstrumentor().instrument(tracer_provider=TracerProvider(), meter_provider=meter_provider,
                                        settings=Settings(builtin_prices=False, prices=PRICES,
                                                          # an unreachable quota state: every call is a
                                                          # fail_open guard decision, for that panel
                                                          guard=GuardSettings(AlertSettings("http://127.0.0.1:9/state",
                                                                                            60.0))))
    start_http_server(port, addr="127.0.0.1")
    models = [tm.gpt2(), tm.llama()]
    with OpenAIServer(usage_mode="never") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0)
        print(f"ready {port}", flush=True)
        for line in sys.stdin:
            if line.strip() == "round":
                run_round(models, client)
                print("done", flush=True)


if __name__ == "__main__":
    main()
