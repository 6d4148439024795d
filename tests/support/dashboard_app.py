"""An app for the dashboard test: the real package, metrics served by the SDK's Prometheus exporter (no collector
binary runs here), traffic from two tiny transformers models and an OpenAI-style client, for several users and
departments.

Every round, per (user, department) in USERS: plain `generate` calls on both tiny models (counted), a streamed
`generate` on each (time to first chunk), a `generate` that raises (error.type), and a chat completion plus a
streamed one against a local OpenAI-compatible server that reports no usage, for a model with no tokenizer
(`estimated` counts, provider `openai`). Everything is priced (inline prices in USD), so every accounting metric,
histogram and label the dashboards use is produced by the package itself.

Budget mode runs too, on the Redis and with the quota file (RATE_LIMITS) the second and third arguments name: rate
limits for one more user only (RATE_LIMITED, erin: `minute: {tokens: 1000}`, `concurrent: 1`). Every round she sends
a prompt over her minute and calls again while her stream is open, so her refusals (RateLimitExceededError,
llm.guard.decisions by window `minute` and `concurrent`) are there for the GPU protection panels. The others have no
budget-mode limit: their calls all go through.

Protocol: `python -m tests.support.dashboard_app PORT REDIS_URL QUOTA_FILE`; prints `ready PORT`; then each stdin
line `round` runs one round and prints `done`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import start_http_server
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

from otel_tokens import RateLimitExceededError, TokenUsageInstrumentor, usage_context
from otel_tokens.config.guard_fields import downgrade_target
from otel_tokens.config.settings import AlertSettings, BudgetSettings, GuardRule, GuardSettings, Settings
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
# Budget mode's quota file (written by the test): rate limits for one user beside USERS, refused by them every round.
RATE_LIMITED = ("erin", "sales")
MINUTE_TOKENS = 1000
# and a 24 h budget for one more (AT_THE_LIMIT, frank), whose calls near it are fitted to it or moved
AT_THE_LIMIT = ("frank", "sales")
DAY_TOKENS = 20_000
RATE_LIMITS = {"users": {"overrides": {RATE_LIMITED[0]: {"minute": {"tokens": MINUTE_TOKENS}, "concurrent": 1},
                                       AT_THE_LIMIT[0]: {"24h": {"tokens": DAY_TOKENS}}}}}
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


def run_burst(models: list[Any], client: Any, budget: Any) -> None:
    """erin, every round: a call served, then a prompt alone over her minute of tokens (refused by `minute` whatever
    the window holds), then a stream and, while it is open, a second call (refused by `concurrent`). What she is
    served fits her minute many times over, so a round within 60 s of the last goes the same way. Every series of
    hers grows every round (the first call makes her known to the counters, which then count her refusals)."""
    user, department = RATE_LIMITED
    prompt = torch.full((1, PROMPT_TOKENS), 5)
    messages = [{"role": "user", "content": "How long until I may ask again?"}]
    with usage_context(user_id=user, department=department):
        models[0].generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                           logits_processor=forcing(PROMPT_TOKENS, [11]))
        budget.flush()  # its slot among the calls in flight given back (queued otherwise)
        try:
            models[0].generate(torch.full((1, MINUTE_TOKENS + 1), 5), max_new_tokens=1)
        except RateLimitExceededError as error:
            assert error.window == "minute", error
        else:
            raise AssertionError("a prompt over the minute's tokens was not refused")
        with client.chat.completions.create(model=OPENAI_MODEL, messages=messages, max_tokens=NEW_TOKENS,
                                            stream=True) as stream:
            try:
                client.chat.completions.create(model=OPENAI_MODEL, messages=messages, max_tokens=NEW_TOKENS)
            except RateLimitExceededError as error:
                assert error.window == "concurrent", error
            else:
                raise AssertionError("a second call while the stream was open was not refused")
            for _ in stream:
                pass
    budget.flush()
    at_the_limit(client, budget)


def at_the_limit(client: Any, budget: Any) -> None:
    """frank, every round: a call whose worst case lands between his warning (80 %) and his 24 h budget, moved by
    the downgrade rule (DOWNGRADE: the same model on another endpoint, here the same server: no new model label),
    and one asking for more than is left, fitted to it. The server's reply is short, so each round spends a few
    tokens of the budget and the next round goes the same way."""
    from otel_tokens import quota_status

    user, department = AT_THE_LIMIT
    messages = [{"role": "user", "content": "Summarise everything."}]
    with usage_context(user_id=user, department=department):
        budget.flush()
        left = int(next(w for w in quota_status().windows if w.window == "24h").remaining)
        for max_tokens in (left - 1000, 2 * DAY_TOKENS):  # the first's worst case: 19,000 + the prompt's bound
            client.chat.completions.create(model=OPENAI_MODEL, messages=messages, max_tokens=max_tokens)
            budget.flush()


def main() -> None:
    port, redis_url, quota_file = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    # an unreachable quota state: every call is a fail_open guard decision, for that panel; and budget mode, whose
    # users past their warning are moved to another endpoint (the same server here), and fitted at their limit
    with OpenAIServer(usage_mode="never") as server:
        serve(port, redis_url, quota_file, server)


def serve(port: int, redis_url: str, quota_file: Path, server: OpenAIServer) -> None:
    import openai

    elsewhere = {"model": OPENAI_MODEL, "base_url": server.base_url}
    rules = (GuardRule("user", "fit"), GuardRule("user", "downgrade", "warning",
                                                 ((OPENAI_MODEL, downgrade_target(elsewhere, "test")),)))
    guard = GuardSettings(AlertSettings("http://127.0.0.1:9/state", 60.0), BudgetSettings(quota_file, redis_url),
                          rules=rules)
    reader = PrometheusMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": SERVICE_NAME}))
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=TracerProvider(), meter_provider=meter_provider,
                            settings=Settings(builtin_prices=False, prices=PRICES, guard=guard))
    start_http_server(port, addr="127.0.0.1")
    models = [tm.gpt2(), tm.llama()]
    client = openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0)
    print(f"ready {port}", flush=True)
    for line in sys.stdin:
        if line.strip() == "round":
            run_round(models, client)
            run_burst(models, client, instrumentor.recorder.enforcement.budget)
            print("done", flush=True)


if __name__ == "__main__":
    main()
