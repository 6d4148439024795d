"""A downgrade that moves the call to another server (the paid API's calls served by the local model server), in
budget mode against a real redis-server and in alert mode: two real local OpenAI-compatible servers, the real
openai SDK (sync, async, streams, `with_raw_response`) and litellm. The second server's own request log is the
proof: the model it was asked for, the key it got (its own, never the paid one), the user's attribution."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from otel_tokens import QuotaExceededError, TokenUsageInstrumentor, names, usage_context
from otel_tokens.config import load_settings
from otel_tokens.ops.alert_endpoint import serve
from tests.support.alerts import alert
from tests.support.budget import write_quotas
from tests.support.openai_server import OpenAIServer
from tests.support.telemetry import Telemetry, make_telemetry

PAID_KEY, LOCAL_KEY = "sk-paid-secret", "local-key-123"
PRICES = [{"match": "gpt-4o", "currency": "USD", "input": 2.5, "output": 10.0},
          {"match": "qwen2.5-7b-instruct", "currency": "USD", "input": 0.01, "output": 0.02}]  # the GPU's own price


@dataclass
class Deployment:
    paid: OpenAIServer
    local: OpenAIServer
    client: openai.OpenAI
    tel: Telemetry
    instrumentor: TokenUsageInstrumentor

    def ask(self, user: str, stream: bool = False, **kwargs: Any) -> Any:
        with usage_context(user_id=user, department="ops"):
            reply = self.client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=20, stream=stream, **kwargs)
            return list(reply) if stream else reply

    def spans(self, user: str) -> list[Any]:
        return [s for s in self.tel.spans() if s.attributes.get(names.USER_ID) == user]


@contextmanager
def deployment(tmp_path: Path, guard: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    """The app's config as an operator writes it (YAML, loaded by the package), the paid API and the local model
    server, an instrumented openai client of the paid API."""
    with OpenAIServer() as paid, OpenAIServer() as local:
        target = {"model": "qwen2.5-7b-instruct", "base_url": local.base_url, "api_key_env": "LOCAL_LLM_KEY"}
        for rule in guard["rules"]:
            if rule["action"] == "downgrade":
                rule["downgrade"] = {"gpt-4o*": target}
        config = tmp_path / "otel-tokens.yaml"
        config.write_text(yaml.safe_dump({"prices": PRICES, "builtin_prices": False, "guard": guard,
                                          "providers": {"127.0.0.1": "openai"}}))
        monkeypatch.setenv("LOCAL_LLM_KEY", LOCAL_KEY)
        settings = load_settings({"OTEL_TOKENS_CONFIG": str(config)})
        assert settings.errors == ()
        tel, tracer_provider, meter_provider = make_telemetry()
        instrumentor = TokenUsageInstrumentor()
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, settings=settings)
        try:
            client = openai.OpenAI(base_url=paid.base_url, api_key=PAID_KEY, max_retries=0)
            yield Deployment(paid, local, client, tel, instrumentor)
        finally:
            instrumentor.uninstrument()


def _budget(tmp_path: Path, redis_url: str, tokens: int = 1000) -> dict[str, Any]:
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"tokens": tokens}}, warning_ratio=0.5)
    return {"quota_file": str(quotas), "store": redis_url, "quota_reload_interval": 0.05,
            "rules": [{"scope": "user", "action": "downgrade", "level": "warning"},
                      {"scope": "user", "action": "reject", "level": "critical"}]}


def _until_moved(ask: Any, local: OpenAIServer) -> int:
    """Calls until one is moved to the local server (past the warning): how many the paid API served."""
    for served in range(40):
        ask()
        if local.requests:
            return served
    raise AssertionError("never moved")


def _moved_request(local: OpenAIServer, user: str) -> Any:
    request = local.requests[-1]
    assert request.body["model"] == "qwen2.5-7b-instruct"
    assert request.headers["authorization"] == f"Bearer {LOCAL_KEY}"  # its own key: the paid one never goes there
    assert f"user.id={user}" in request.headers.get("baggage", "")  # the attribution travels with the call
    return request


def test_past_the_warning_the_paid_call_is_served_by_the_local_server_with_the_users_attribution(
        tmp_path, redis_url, monkeypatch):
    with deployment(tmp_path, _budget(tmp_path, redis_url), monkeypatch) as app:
        paid_calls = _until_moved(lambda: app.ask("ann"), app.local)  # past 50 % of 1,000 tokens
        assert paid_calls >= 2 and len(app.paid.requests) == paid_calls and len(app.local.requests) == 1
        _moved_request(app.local, "ann")
        app.ask("ann", stream=True)  # a stream, moved the same way
        _moved_request(app.local, "ann")
        with usage_context(user_id="ann", department="ops"):  # with_raw_response: the same
            raw = app.client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        assert raw.parse().model and len(app.local.requests) == 3
        assert len(app.paid.requests) == paid_calls  # nothing more reached the paid API
        app.ask("bob")  # another user is served by the paid API as asked
        assert len(app.paid.requests) == paid_calls + 1 and app.paid.requests[-1].body["model"] == "gpt-4o"

        moved = [s for s in app.spans("ann") if s.attributes.get(names.LLM_QUOTA_ACTION) == "downgrade"]
        assert len(moved) == 3
        span = moved[0].attributes
        assert span[names.GEN_AI_REQUEST_MODEL] == "qwen2.5-7b-instruct"
        assert span[names.LLM_QUOTA_ORIGINAL_MODEL] == "gpt-4o"
        assert (span[names.SERVER_ADDRESS], span[names.SERVER_PORT]) == ("127.0.0.1", app.local.port)
        assert (span[names.LLM_QUOTA_ORIGINAL_SERVER_ADDRESS], span[names.LLM_QUOTA_ORIGINAL_SERVER_PORT]) == (
            "127.0.0.1", app.paid.port)
        # priced at the local model's price, and the metrics carry the served model
        usage = app.local.requests[0]
        reply_tokens = span[names.GEN_AI_USAGE_INPUT_TOKENS], span[names.GEN_AI_USAGE_OUTPUT_TOKENS]
        assert span[names.LLM_COST] == pytest.approx((reply_tokens[0] * 0.01 + reply_tokens[1] * 0.02) / 1e6)
        assert usage.body["max_tokens"] == 20
        models = {p.attributes[names.GEN_AI_REQUEST_MODEL] for p in app.tel.metrics()[names.METRIC_LLM_TOKEN_USAGE]
                  if p.attributes.get(names.USER_ID) == "ann"}
        assert models == {"gpt-4o", "qwen2.5-7b-instruct"}


def test_async_calls_and_streams_are_moved_too(tmp_path, redis_url, monkeypatch):
    with deployment(tmp_path, _budget(tmp_path, redis_url, tokens=300), monkeypatch) as app:
        client = openai.AsyncOpenAI(base_url=app.paid.base_url, api_key=PAID_KEY, max_retries=0)

        async def run() -> None:
            with usage_context(user_id="cy", department="ops"):
                for _ in range(40):  # until past 50 %
                    await client.chat.completions.create(
                        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=20)
                    if app.local.requests:
                        break
                stream = await client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True)
                assert [c async for c in stream]

        asyncio.run(run())
        assert len(app.paid.requests) >= 1 and len(app.local.requests) == 2
        _moved_request(app.local, "cy")
        assert app.local.requests[-1].body["stream"] is True


def test_a_failure_of_the_local_server_is_the_callers_error_and_never_retried_on_the_paid_one(
        tmp_path, redis_url, monkeypatch):
    with deployment(tmp_path, _budget(tmp_path, redis_url, tokens=300), monkeypatch) as app:
        paid_calls = _until_moved(lambda: app.ask("di"), app.local)
        app.local.fail_next(503)
        with pytest.raises(openai.InternalServerError):
            app.ask("di")
        assert len(app.paid.requests) == paid_calls and len(app.local.requests) == 2
        failed = app.spans("di")[-1].attributes
        assert failed[names.ERROR_TYPE] == "InternalServerError" and failed[names.SERVER_PORT] == app.local.port


def test_in_alert_mode_the_warning_moves_the_call_and_the_critical_refuses(tmp_path, monkeypatch):
    state_server = serve("127.0.0.1", 0)
    threading.Thread(target=state_server.serve_forever, daemon=True).start()
    guard = {"source": f"http://127.0.0.1:{state_server.server_address[1]}/state", "poll_interval": 0.05,
             # alert mode takes the first rule that matches the alert's severity: the critical one first
             "rules": [{"scope": "user", "action": "reject", "level": "critical"},
                       {"scope": "user", "action": "downgrade", "level": "warning"}]}
    try:
        with deployment(tmp_path, guard, monkeypatch) as app:
            alert_mode = app.instrumentor.recorder.enforcement.alert
            app.ask("eve")
            state_server.state.update({"alerts": [alert("LLMUserTokenQuota", "warning", user_id="eve")]})
            alert_mode.refresh()
            app.ask("eve")
            app.ask("eve", stream=True)
            assert len(app.paid.requests) == 1 and len(app.local.requests) == 2
            _moved_request(app.local, "eve")
            state_server.state.update({"alerts": [alert("LLMUserTokenQuota", "critical", user_id="eve")]})
            alert_mode.refresh()
            with pytest.raises(QuotaExceededError):
                app.ask("eve")
            assert len(app.local.requests) == 2
            moved = [s for s in app.spans("eve") if s.attributes.get(names.LLM_QUOTA_ACTION) == "downgrade"]
            assert [s.attributes[names.SERVER_PORT] for s in moved] == [app.local.port] * 2
    finally:
        state_server.shutdown()
        state_server.server_close()


def test_litellm_calls_are_moved_to_the_local_server(tmp_path, redis_url, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm downloads its cost map otherwise
    import litellm

    with deployment(tmp_path, _budget(tmp_path, redis_url, tokens=300), monkeypatch) as app:
        def ask() -> Any:
            with usage_context(user_id="flo", department="ops"):
                return litellm.completion(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                          api_base=app.paid.base_url, api_key=PAID_KEY, max_tokens=20)

        paid_calls = _until_moved(ask, app.local)
        reply = ask()
        assert paid_calls >= 1 and len(app.paid.requests) == paid_calls and len(app.local.requests) == 2
        _moved_request(app.local, "flo")
        assert reply.usage.total_tokens > 0
        span = app.spans("flo")[-1].attributes
        assert span[names.LLM_QUOTA_ACTION] == "downgrade" and span[names.SERVER_PORT] == app.local.port
        assert span[names.GEN_AI_REQUEST_MODEL] == "qwen2.5-7b-instruct"
