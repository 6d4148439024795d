"""litellm (its `openai/` route) over real HTTP to the local OpenAI-compatible server: every public
function, streamed sync and async, recorded once with the server's own usage, attributed, priced,
guarded; nothing litellm does inside through the openai SDK is counted a second time."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm downloads its cost map otherwise
import litellm

from otel_tokens import QuotaExceededError, names, usage_context
from otel_tokens.config.settings import AlertSettings, GuardRule, GuardSettings, Settings
from otel_tokens.ops.alert_endpoint import serve
from tests.support.budget import budget_app, write_quotas
from tests.support.openai_server import OpenAIServer
from tests.support.telemetry import Telemetry, instrumented

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "知识库里有什么？ What is in it?"}]
PRICES = ({"match": MODEL, "currency": "USD", "input": 0.15, "output": 0.6},
          {"match": "text-embedding-3-small", "currency": "USD", "input": 0.02, "output": 0},
          {"match": "gpt-3.5-turbo-instruct", "currency": "USD", "input": 1.5, "output": 2})


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def tel() -> Iterator[Telemetry]:
    with instrumented(Settings(prices=PRICES)) as telemetry:
        yield telemetry


def ask(server: OpenAIServer, **kwargs: Any) -> dict[str, Any]:
    return {"model": f"openai/{MODEL}", "messages": MESSAGES, "api_base": server.base_url, "api_key": "x", **kwargs}


def usage_of(span: Any) -> tuple[Any, Any, Any]:
    a = span.attributes
    return (a.get(names.GEN_AI_USAGE_INPUT_TOKENS), a.get(names.GEN_AI_USAGE_OUTPUT_TOKENS),
            a.get(names.LLM_USAGE_SOURCE))


def truth(server: OpenAIServer) -> tuple[int, int]:
    return server.prompt_tokens(MODEL, MESSAGES), server.completion_tokens(MODEL, server.reply)


def test_every_function_is_one_span_with_the_servers_usage_attributed_and_priced(server, tel):
    prompt, completion = truth(server)

    async def async_calls() -> None:
        await litellm.acompletion(**ask(server))
        stream = await litellm.acompletion(**ask(server, stream=True))
        assert "".join([c.choices[0].delta.content or "" async for c in stream]) == server.reply
        await litellm.aembedding(model="openai/text-embedding-3-small", input=["hello world"], api_base=server.base_url,
                                 api_key="x")

    with usage_context(user_id="alice", department="research"):
        response = litellm.completion(**ask(server))
        assert response.choices[0].message.content == server.reply
        chunks = list(litellm.completion(f"openai/{MODEL}", MESSAGES, api_base=server.base_url, api_key="x",
                                         stream=True))  # the positional form
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == server.reply
        assert all(c.choices for c in chunks)  # the usage chunk we asked for is hidden from the caller
        assert server.last_request.body["stream_options"] == {"include_usage": True}
        litellm.text_completion(prompt="Say hi", model="openai/gpt-3.5-turbo-instruct", api_base=server.base_url,
                                api_key="x")
        litellm.embedding(model="openai/text-embedding-3-small", input=["hello world"], api_base=server.base_url,
                          api_key="x")
        asyncio.run(async_calls())
    spans = tel.spans()
    assert len(server.requests) == len(spans) == 7  # one span per call; litellm's embeddings via the SDK not twice
    assert [s.attributes[names.GEN_AI_OPERATION_NAME] for s in spans] == [
        "chat", "chat", "text_completion", "embeddings", "chat", "chat", "embeddings"]
    for span in spans:
        a = span.attributes
        assert (a[names.USER_ID], a[names.DEPARTMENT], a[names.GEN_AI_PROVIDER_NAME]) == ("alice", "research", "openai")
        assert (a[names.SERVER_ADDRESS], a[names.SERVER_PORT]) == ("127.0.0.1", server.port)
        assert a[names.LLM_USAGE_SOURCE] == "reported" and a[names.LLM_COST] > 0
    for span in (spans[0], spans[1], spans[4], spans[5]):
        assert usage_of(span) == (prompt, completion, "reported")
        assert span.attributes[names.GEN_AI_REQUEST_MODEL] == MODEL
        assert span.attributes[names.LLM_COST] == pytest.approx((prompt * 0.15 + completion * 0.6) / 1e6)
    embedding_tokens = server.text_tokens("text-embedding-3-small", ["hello world"])
    assert usage_of(spans[3]) == (embedding_tokens, None, "reported")
    totals = tel.token_totals(names.USER_ID, names.GEN_AI_TOKEN_TYPE)
    assert totals[("alice", "output")] == 5 * completion  # four chats and the text completion
    assert totals[("alice", "input")] == 4 * prompt + server.text_tokens("gpt-3.5-turbo-instruct", "Say hi") \
        + 2 * embedding_tokens
    request = server.requests[0]
    assert request.headers.get("baggage") == "user.id=alice,department=research"  # a private host: propagated
    assert request.headers.get("traceparent", "").split("-")[1] == format(spans[0].context.trace_id, "032x")


CL100K_MODEL = "gpt-4"  # the test server counts cl100k for every model: counted locally, the same tokenizer


def test_a_stream_is_recorded_once_however_it_ends(server, tel):
    prompt, completion = truth(server)
    model = f"openai/{CL100K_MODEL}"
    stream = litellm.completion(**ask(server, model=model, stream=True))
    next(iter(stream))
    stream.close()  # break then close: the usage chunk never came
    stream = litellm.completion(**ask(server, model=model, stream=True))
    next(iter(stream))
    del stream
    gc.collect()  # abandoned
    server.truncate_next(after_chunks=3)
    with pytest.raises(Exception):  # noqa: B017 - litellm maps the broken stream to its own error types
        list(litellm.completion(**ask(server, model=model, stream=True)))
    list(litellm.completion(**ask(server, model=model, stream=True, stream_options={"include_usage": True})))
    spans = tel.spans()
    assert len(spans) == 4
    for span in spans[:3]:  # counted locally: the input is the prompt, exactly, the output what was received,
        inputs, _, source = usage_of(span)  # an estimate: the server may have generated more than was read
        assert inputs == prompt and source == "estimated"
    assert names.ERROR_TYPE in spans[2].attributes
    assert usage_of(spans[3]) == (prompt, completion, "reported")


def test_a_server_without_usage_is_counted_by_our_tokenizer_not_litellms(server, tel):
    """litellm answers a missing usage block with zeros (non-streamed) or its own count (streamed):
    neither is the server's, so both are counted locally and called `counted`."""
    server.usage_mode = "never"
    model = f"openai/{CL100K_MODEL}"
    litellm.completion(**ask(server, model=model))
    list(litellm.completion(**ask(server, model=model, stream=True)))
    list(litellm.completion(**ask(server, model=model, stream=True, stream_options={"include_usage": True})))
    spans = tel.spans()
    assert len(spans) == 3
    for span in spans:  # exactly what the server would have billed
        assert usage_of(span) == (*truth(server), "counted"), span.attributes


def test_a_server_that_refuses_stream_options_costs_the_caller_no_error(server, tel):
    from otel_tokens.integrations.openai_request import NO_STREAM_OPTIONS

    NO_STREAM_OPTIONS.clear()
    server.fail_next(400, body={"error": {"message": "Unrecognized request argument supplied: stream_options",
                                          "type": "invalid_request_error", "param": "stream_options"}})
    text = "".join(c.choices[0].delta.content or "" for c in litellm.completion(**ask(server, stream=True)))
    assert text == server.reply and len(server.requests) == 2  # refused, then sent as written
    assert "stream_options" not in server.requests[-1].body
    list(litellm.completion(**ask(server, stream=True)))
    assert "stream_options" not in server.requests[-1].body  # that server is not asked again
    first, _ = tel.spans()
    assert names.ERROR_TYPE not in first.attributes and usage_of(first)[2] == "counted"
    NO_STREAM_OPTIONS.clear()


def _alert(severity: str, user: str) -> dict[str, Any]:
    return {"status": "firing", "labels": {"alertname": "LLMUserTokenQuota", "severity": severity, "quota": "tokens",
                                           "window": "24h", "user_id": user},
            "annotations": {"usage": "1.1k tokens", "limit": "1k tokens", "percent": "110%"}}


def test_alert_mode_downgrades_on_the_callers_route_and_refuses_before_sending(server):
    state_server = serve("127.0.0.1", 0)
    threading.Thread(target=state_server.serve_forever, daemon=True).start()
    rules = (GuardRule("user", "reject", "critical"), GuardRule("user", "downgrade", "warning", (("gpt-4o*", MODEL),)))
    url = f"http://127.0.0.1:{state_server.server_address[1]}/state"
    try:
        with instrumented(Settings(guard=GuardSettings(AlertSettings(url, 0.05, stale_grace=0), rules=rules))) as tel:
            from otel_tokens import TokenUsageInstrumentor

            guard = TokenUsageInstrumentor().recorder.enforcement.alert
            state_server.state.update({"alerts": [_alert("warning", "alice")]})
            guard.refresh()
            with usage_context(user_id="alice"):
                litellm.completion(**ask(server, model="openai/gpt-4o"))
                assert server.last_request.body["model"] == MODEL  # the cheaper model, on the same route
                state_server.state.update({"alerts": [_alert("critical", "alice")]})
                guard.refresh()
                before = len(server.requests)
                with pytest.raises(QuotaExceededError):
                    litellm.completion(**ask(server))
                with pytest.raises(QuotaExceededError):
                    asyncio.run(litellm.acompletion(**ask(server)))
                assert len(server.requests) == before  # refused before anything was sent
            downgraded, refused, refused_async = tel.spans()
    finally:
        state_server.shutdown()
        state_server.server_close()
    assert downgraded.attributes[names.LLM_QUOTA_ORIGINAL_MODEL] == "gpt-4o"
    assert downgraded.attributes[names.GEN_AI_REQUEST_MODEL] == MODEL
    for span in (refused, refused_async):
        assert span.attributes[names.LLM_QUOTA_ACTION] == "reject"
        assert span.attributes[names.ERROR_TYPE] == "QuotaExceededError"


def test_budget_mode_refuses_a_litellm_call_that_would_cross_the_quota(tmp_path, redis_url):
    quotas = write_quotas(tmp_path / "quotas.yml", {"default": {"tokens": 400}})
    for app in budget_app(quotas, redis_url):
        served = 0
        with usage_context(user_id="carol", department="sales"), pytest.raises(QuotaExceededError):
            for served in range(1, 100):  # noqa: B007 - the count at the refusal is the result
                litellm.completion(**ask(app.server, max_tokens=30))
        assert len(app.server.requests) == served - 1  # the refused call never left the process
        tokens, _, in_flight = app.held("carol")
        assert in_flight == 0 and tokens == app.metric_tokens("carol") <= 400
        served_spans = [s for s in app.tel.spans() if names.ERROR_TYPE not in s.attributes]
        assert len(served_spans) == served - 1 and all(usage_of(s)[2] == "reported" for s in served_spans)
        assert tokens == sum(usage_of(s)[0] + usage_of(s)[1] for s in served_spans)  # what the server billed


def test_completion_with_the_acompletion_flag_is_one_span_and_uninstrument_restores_litellm(server):
    import litellm.chat_completions.dispatch as dispatch

    original = dispatch.completion
    with instrumented() as tel:
        assert litellm.completion is not original and dispatch.completion is not original  # both names wrapped
        asyncio.run(litellm.completion(**ask(server), acompletion=True))
        assert len(tel.spans()) == 1 and len(server.requests) == 1
    assert litellm.completion is original and dispatch.completion is original
    litellm.completion(**ask(server))  # no longer recorded, and works
    assert len(tel.spans()) == 1 and len(server.requests) == 2


# --- found by attacking the integration: each was a double count, a caller-visible error or a wrong charge ---

def test_text_completion_streams_are_one_span_each_and_never_asked_for_stream_options(server, tel):
    """litellm sends a text stream's request on its first chunk, after the call returned: read inside
    the covering call, it is not recorded again by the SDK's wrapper; a refusal there could not be
    retried, so no stream_options are added to text streams."""
    for _ in range(2):
        chunks = list(litellm.text_completion(prompt="Say hi", model="openai/gpt-3.5-turbo-instruct",
                                              api_base=server.base_url, api_key="x", stream=True))
        assert "".join(c.choices[0].text or "" for c in chunks) == server.reply
        assert "stream_options" not in server.last_request.body
    spans = tel.spans()
    assert len(spans) == len(server.requests) == 2
    assert all(usage_of(s) == (server.text_tokens("gpt-3.5-turbo-instruct", "Say hi"),
                               server.completion_tokens("gpt-3.5-turbo-instruct", server.reply), "counted")
               for s in spans)


def test_a_stream_reads_and_closes_as_litellm_lets_it(server, tel):
    """litellm's streams iterate both ways and close synchronously, from completion and acompletion alike."""
    async def read_sync_stream_async() -> str:
        stream = litellm.completion(**ask(server, stream=True))
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    async def close_async_stream() -> None:
        stream = await litellm.acompletion(**ask(server, stream=True))
        await stream.__anext__()
        assert stream.close() is None  # litellm's close is not a coroutine

    assert asyncio.run(read_sync_stream_async()) == server.reply
    asyncio.run(close_async_stream())
    assert len(tel.spans()) == 2


def test_what_runs_after_the_call_is_recorded_as_its_own(server, tel):
    """A task litellm schedules inside the call (a success callback making its own LLM call) copied the
    covering context; once the call returned it is no longer covered."""
    import openai
    from litellm.integrations.custom_logger import CustomLogger

    class Judge(CustomLogger):
        judged = False

        async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
                                          ) -> None:
            if self.judged:  # litellm may call it from more than one of its callback lists
                return
            self.judged = True
            judge = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            await judge.chat.completions.create(model=MODEL, messages=MESSAGES)

    async def main() -> None:
        await litellm.acompletion(**ask(server))
        for _ in range(100):
            if len(server.requests) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)

    judge = Judge()
    litellm.callbacks = [judge]
    try:
        asyncio.run(main())
    finally:  # litellm copies callbacks into its own lists: take it out of every one, or later tests call it
        litellm.callbacks = []
        for name in dir(litellm):
            listed = getattr(litellm, name, None)
            if name.endswith("callback") or name.endswith("callbacks"):
                while isinstance(listed, list) and judge in listed:
                    listed.remove(judge)
    assert len(server.requests) == len(tel.spans()) == 2  # the litellm call and the judge's, each its own span


def test_the_async_flags_the_server_set_in_config_and_the_callers_headers(server, tel, monkeypatch):
    asyncio.run(litellm.embedding(model="openai/text-embedding-3-small", input=["hi"], api_base=server.base_url,
                                  api_key="x", aembedding=True))
    assert len(tel.spans()) == len(server.requests) == 1  # one span, recorded when awaited
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)  # the server named in configuration, not the call
    with usage_context(user_id="alice"):
        litellm.completion(model=f"openai/{MODEL}", messages=MESSAGES, api_key="x",
                           headers={"traceparent": "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"})
    span = tel.spans()[-1]
    assert (span.attributes[names.SERVER_ADDRESS], span.attributes[names.SERVER_PORT]) == ("127.0.0.1", server.port)
    assert server.last_request.headers["traceparent"].startswith("00-0123456789abcdef")  # the caller's own wins
    assert server.last_request.headers["baggage"] == "user.id=alice"
    with usage_context(user_id="bob"):
        litellm.completion(**ask(server), mock_response="no provider called")
    assert len(tel.spans()) == 2 and len(server.requests) == 2  # a mock costs nobody anything


def test_a_refusal_of_stream_options_is_recognised_on_litellms_own_http_routes(server, tel):
    from otel_tokens.integrations.openai_request import NO_STREAM_OPTIONS

    NO_STREAM_OPTIONS.clear()
    refusal = {"error": {"message": "Unrecognized request argument supplied: stream_options",
                         "type": "invalid_request_error", "param": "stream_options"}}
    server.fail_next(400, body=refusal)
    text = "".join(c.choices[0].delta.content or "" for c in litellm.completion(
        model="hosted_vllm/qwen2.5-7b", messages=MESSAGES, api_base=server.base_url, api_key="x", stream=True)
        if c.choices)
    assert text == server.reply and "stream_options" not in server.last_request.body
    assert len(tel.spans()) == 1 and names.ERROR_TYPE not in tel.spans()[0].attributes
    NO_STREAM_OPTIONS.clear()
