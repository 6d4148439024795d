"""The openai integration over real HTTP against the local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import gc

import httpx
import openai
import pytest

from otel_tokens import TokenUsageInstrumentor, names, usage_context
from otel_tokens.config.settings import Settings
from tests.support.local_tokenizer import build_local_tokenizer
from tests.support.openai_server import OpenAIServer, count_cl100k
from tests.support.telemetry import Telemetry, make_telemetry

CHINESE = "知识库检索完成。答案：请在设置页面重置密码，然后重新登录系统。"
ENGLISH = "The answer is in the handbook: reset the password on the settings page, then sign in again."
MESSAGES = [{"role": "system", "content": "You answer from the knowledge base."},
            {"role": "user", "content": "How do I reset my password? 怎么重置密码？"}]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    return build_local_tokenizer(tmp_path_factory.mktemp("local-tokenizer"))


@pytest.fixture
def server(tokenizer_dir):
    with OpenAIServer(tokenizer_dir=tokenizer_dir) as srv:
        yield srv


@pytest.fixture
def instrument(tokenizer_dir):
    """Instrument with the given Settings fields (local-* models mapped to the local tokenizer)."""
    instrumentor = TokenUsageInstrumentor()
    active = []

    def start(**fields) -> Telemetry:
        tel, tracer_provider, meter_provider = make_telemetry()
        fields.setdefault("tokenizers", {"local-*": str(tokenizer_dir)})
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                                settings=Settings(**fields))
        active.append(True)
        return tel

    yield start
    if active:
        instrumentor.uninstrument()


@pytest.fixture
def tel(instrument) -> Telemetry:
    return instrument()


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)


def aclient(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)


def usage_of(span) -> tuple:
    a = span.attributes
    return (a.get(names.GEN_AI_USAGE_INPUT_TOKENS), a.get(names.GEN_AI_USAGE_OUTPUT_TOKENS),
            a.get(names.LLM_USAGE_SOURCE))


# --- reported usage, every call shape -------------------------------------------------------------------------
def test_reported_usage_of_every_call_shape_lands_on_spans_and_per_user_metrics(server, tel):
    c = client(server)
    server.reply = ENGLISH
    expected = {}
    with usage_context(user_id="alice", department="support"):
        c.chat.completions.create(model="gpt-4", messages=MESSAGES)
        expected["chat"] = (server.prompt_tokens("gpt-4", MESSAGES), count_cl100k(ENGLISH), "reported")
    with usage_context(user_id="bob", department="research"):
        c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Summarise the handbook")
        expected["text_completion"] = (count_cl100k("Summarise the handbook"), count_cl100k(ENGLISH), "reported")
        c.embeddings.create(model="text-embedding-3-small", input=["first chunk", "第二段"])
        expected["embeddings"] = (count_cl100k("first chunk") + count_cl100k("第二段"), None, "reported")
    spans = {s.attributes[names.GEN_AI_OPERATION_NAME]: s for s in tel.spans()}
    assert {op: usage_of(s) for op, s in spans.items()} == expected
    chat = spans["chat"]
    assert chat.name == "chat gpt-4" and chat.kind.name == "CLIENT"
    assert (chat.attributes[names.SERVER_ADDRESS], chat.attributes[names.SERVER_PORT]) == ("127.0.0.1", server.port)
    assert chat.attributes[names.GEN_AI_PROVIDER_NAME] == "openai"
    assert chat.attributes[names.USER_ID] == "alice"
    totals = tel.token_totals(names.USER_ID, names.GEN_AI_TOKEN_TYPE)
    assert totals == {("alice", "input"): expected["chat"][0], ("alice", "output"): expected["chat"][1],
                      ("bob", "input"): expected["text_completion"][0] + expected["embeddings"][0],
                      ("bob", "output"): expected["text_completion"][1]}
def test_responses_api_and_cached_and_reasoning_details(server, tel):
    server.cached_tokens, server.reasoning_tokens = 5, 7
    server.reply = ENGLISH
    c = client(server)
    with usage_context(user_id="carol"):
        c.chat.completions.create(model="gpt-4", messages=MESSAGES)
        c.responses.create(model="gpt-4", input="What is the refund policy?")
    chat, responses = tel.spans()
    assert chat.attributes[names.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 5
    assert chat.attributes[names.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == 7
    assert chat.attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS] == count_cl100k(ENGLISH) + 7
    assert usage_of(responses) == (server.input_tokens("gpt-4", "What is the refund policy?"),
                                   count_cl100k(ENGLISH) + 7, "reported")
    assert responses.attributes[names.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 5
def test_async_calls(server, tel):
    server.reply = CHINESE

    async def main():
        c = aclient(server)
        with usage_context(user_id="dave"):
            await c.chat.completions.create(model="gpt-4", messages=MESSAGES)
            await c.embeddings.create(model="text-embedding-3-small", input="向量")
            stream = await c.chat.completions.create(model="gpt-4", messages=MESSAGES, stream=True)
            async for _ in stream:
                pass

    asyncio.run(main())
    chat, embeddings, stream = tel.spans()
    assert usage_of(chat) == (server.prompt_tokens("gpt-4", MESSAGES), count_cl100k(CHINESE), "reported")
    assert usage_of(embeddings) == (count_cl100k("向量"), None, "reported")
    assert usage_of(stream) == (server.prompt_tokens("gpt-4", MESSAGES), count_cl100k(CHINESE), "reported")
    assert tel.token_totals(names.USER_ID) == {("dave",): sum(
        (usage_of(s)[0] or 0) + (usage_of(s)[1] or 0) for s in (chat, embeddings, stream))}


# --- streams ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reply", [ENGLISH, CHINESE])
@pytest.mark.parametrize("model", ["gpt-4", "local-qwen2.5-chat"])
def test_streams_without_usage_are_counted_exactly(server, tel, reply, model):
    server.reply, server.usage_mode = reply, "never"
    stream = client(server).chat.completions.create(model=model, messages=MESSAGES, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == reply
    assert usage_of(tel.span()) == (server.prompt_tokens(model, MESSAGES), server.completion_tokens(model, reply),
                                    "counted")
    (ttfc,) = tel.metrics()[names.METRIC_TIME_TO_FIRST_CHUNK]
    assert ttfc.count == 1
def test_stream_with_usage_chunk_is_reported(server, tel):
    server.reply = ENGLISH
    stream = client(server).chat.completions.create(model="gpt-4", messages=MESSAGES, stream=True,
                                                    stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].choices == []  # the caller asked for it: not hidden
    assert usage_of(tel.span()) == (server.prompt_tokens("gpt-4", MESSAGES), count_cl100k(ENGLISH), "reported")
def test_include_usage_injection_hides_the_extra_chunk(server, instrument):
    tel = instrument(stream_include_usage=True)
    server.reply = ENGLISH
    chunks = list(client(server).chat.completions.create(model="gpt-4", messages=MESSAGES, stream=True))
    assert all(chunk.choices for chunk in chunks)  # no usage-only chunk reaches the caller
    assert server.last_request.body["stream_options"] == {"include_usage": True}
    assert usage_of(tel.span()) == (server.prompt_tokens("gpt-4", MESSAGES), count_cl100k(ENGLISH), "reported")


def _stream(server, **kwargs):
    return client(server).chat.completions.create(model="gpt-4", messages=MESSAGES, stream=True, **kwargs)
def test_every_way_a_sync_stream_ends_records_exactly_once(server, tel):
    server.reply, server.usage_mode = ENGLISH, "never"
    # exhausted
    list(_stream(server))
    # break, then close()
    stream = _stream(server)
    first = next(iter(stream))
    stream.close()
    stream.close()
    # with-block left early
    with _stream(server) as stream:
        for _ in stream:
            break
    # exception mid-stream
    server.truncate_next(after_chunks=3)
    with pytest.raises(Exception) as caught:
        list(_stream(server))
    # abandoned and garbage collected
    stream = _stream(server)
    next(stream)
    del stream
    gc.collect()
    spans = tel.spans()
    assert len(spans) == 5
    outputs = [s.attributes.get(names.GEN_AI_USAGE_OUTPUT_TOKENS) for s in spans]
    assert outputs[0] == count_cl100k(ENGLISH)
    assert outputs[1] == count_cl100k(first.choices[0].delta.content or "")  # what was received
    assert spans[3].attributes[names.ERROR_TYPE] == type(caught.value).__qualname__
    # only the exhausted stream is an exact count; one left before its end may have been generated further
    assert [s.attributes[names.LLM_USAGE_SOURCE] for s in spans] == ["counted"] + ["estimated"] * 4
    assert sum(point.value for point in tel.metrics()[names.METRIC_LLM_REQUESTS]) == 5
def test_every_way_an_async_stream_ends_records_exactly_once(server, tel):
    server.reply, server.usage_mode = ENGLISH, "never"

    async def main():
        c = aclient(server)

        async def new():
            return await c.chat.completions.create(model="gpt-4", messages=MESSAGES, stream=True)

        async for _ in await new():
            pass
        stream = await new()
        await stream.__anext__()
        await stream.close()
        stream = await new()
        await stream.__anext__()
        await stream.aclose()
        async with await new() as stream:
            async for _ in stream:
                break
        server.truncate_next(after_chunks=2)
        with pytest.raises(openai.APIError):
            async for _ in await new():
                pass
        stream = await new()
        await stream.__anext__()
        del stream
        gc.collect()

    asyncio.run(main())
    spans = tel.spans()
    assert len(spans) == 6
    assert spans[0].attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS] == count_cl100k(ENGLISH)
    assert names.ERROR_TYPE in spans[4].attributes
    assert all(names.ERROR_TYPE not in s.attributes for i, s in enumerate(spans) if i != 4)
def test_the_caller_sees_exactly_what_it_would_see_uninstrumented(server, instrument):
    server.reply, server.usage_mode = CHINESE, "auto"

    def run():
        c = client(server)
        stream = _stream(server, stream_options={"include_usage": True})
        chunks = [chunk.model_dump(exclude={"id", "created"}) for chunk in stream]
        response = c.chat.completions.create(model="gpt-4", messages=MESSAGES).model_dump(exclude={"id", "created"})
        return chunks, response

    bare = run()
    instrument()
    assert run() == bare
    stream = _stream(server)
    assert isinstance(stream, openai.Stream)
    assert stream.response.status_code == 200  # attributes of the original
    stream.close()
def test_errors_pass_through_as_the_same_object(server, tel, monkeypatch):
    server.fail_next(429)
    with pytest.raises(openai.RateLimitError) as caught:
        client(server).chat.completions.create(model="gpt-4", messages=MESSAGES)
    span = tel.span()
    assert span.attributes[names.ERROR_TYPE] == "RateLimitError"
    assert caught.value.status_code == 429

    # A real request: newer SDKs read the request's headers when building the error.
    sentinel = openai.APIConnectionError(request=httpx.Request("POST", server.base_url))

    def refuse(*args, **kwargs):
        raise sentinel

    monkeypatch.setattr(openai._base_client.SyncAPIClient, "request", refuse)
    with pytest.raises(openai.APIConnectionError) as caught:
        client(server).chat.completions.create(model="gpt-4", messages=MESSAGES)
    assert caught.value is sentinel
def test_malformed_body_is_an_error_not_a_count(server, tel):
    server.malformed_next()
    with pytest.raises(Exception) as caught:
        client(server).chat.completions.create(model="gpt-4", messages=MESSAGES)
    span = tel.span()
    assert span.attributes[names.ERROR_TYPE] == type(caught.value).__qualname__
    assert names.GEN_AI_USAGE_INPUT_TOKENS not in span.attributes
def test_usage_inside_the_choice_and_raw_responses(server, tel):
    server.reply = ENGLISH
    server.usage_mode = "in_choice"
    client(server).chat.completions.create(model="gpt-4", messages=MESSAGES)
    server.usage_mode = "auto"
    raw = client(server).chat.completions.with_raw_response.create(model="gpt-4", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == ENGLISH
    with client(server).chat.completions.with_streaming_response.create(model="gpt-4", messages=MESSAGES) as r:
        r.parse()
    expected = (server.prompt_tokens("gpt-4", MESSAGES), count_cl100k(ENGLISH), "reported")
    assert [usage_of(s) for s in tel.spans()] == [expected] * 3
def test_stream_helpers_and_parse(server, tel):
    server.reply = ENGLISH
    c = client(server)
    with c.chat.completions.stream(model="gpt-4", messages=MESSAGES) as stream:
        for _ in stream:
            pass
    c.chat.completions.parse(model="gpt-4", messages=MESSAGES)
    with c.responses.stream(model="gpt-4", input="refunds?") as stream:
        for _ in stream:
            pass
    spans = tel.spans()
    assert len(spans) == 3
    assert usage_of(spans[0])[:2] == (server.prompt_tokens("gpt-4", MESSAGES), count_cl100k(ENGLISH))
    assert usage_of(spans[1]) == (server.prompt_tokens("gpt-4", MESSAGES), count_cl100k(ENGLISH), "reported")
    assert usage_of(spans[2]) == (server.input_tokens("gpt-4", "refunds?"), count_cl100k(ENGLISH), "reported")


# --- propagation -----------------------------------------------------------------------------------------------
def test_requests_carry_traceparent_and_baggage(server, tel):
    with usage_context(user_id="alice", department="support", session_id="s-9"):
        client(server).chat.completions.create(model="gpt-4", messages=MESSAGES)
    headers = server.last_request.headers
    span = tel.span()
    assert headers["traceparent"].split("-")[1] == format(span.context.trace_id, "032x")
    assert headers["traceparent"].split("-")[2] == format(span.context.span_id, "016x")
    assert set(headers["baggage"].split(",")) == {"user.id=alice", "department=support", "session.id=s-9"}
def test_a_model_server_attributes_its_counts_to_the_callers_user_in_the_same_trace(server, tel, monkeypatch):
    """The server side runs a transformers model under the context extracted from the request, as an
    instrumented web framework would: its generate span joins the trace and is attributed to alice
    (the server trusts its callers' baggage, as a model server behind the apps is configured)."""
    import torch
    from opentelemetry import context, propagate

    from otel_tokens.attribution import context as attribution
    from tests.support import tiny_models as tm
    from tests.support.tiny_models import forcing

    monkeypatch.setattr(attribution, "_TRUST_BAGGAGE", [True])  # client and server share this process

    model = tm.gpt2()

    def serve(path, headers, body):
        token = context.attach(propagate.extract(headers))
        try:
            model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, logits_processor=forcing(3, [11, 12]))
        finally:
            context.detach(token)

    server.on_request = serve
    with usage_context(user_id="alice", department="support"):
        client(server).chat.completions.create(model="local-tiny", messages=MESSAGES)
    spans = {s.attributes[names.GEN_AI_PROVIDER_NAME]: s for s in tel.spans()}
    server_span, client_span = spans["transformers"], spans["openai"]
    assert server_span.context.trace_id == client_span.context.trace_id
    assert server_span.parent.span_id == client_span.context.span_id
    assert server_span.attributes[names.USER_ID] == "alice"
    assert server_span.attributes[names.DEPARTMENT] == "support"
    totals = tel.token_totals(names.GEN_AI_PROVIDER_NAME, names.USER_ID)
    assert totals[("transformers", "alice")] == 5
def test_a_broken_propagator_loses_the_headers_only(server, tel, monkeypatch):
    from opentelemetry import propagate

    class Broken:
        fields = frozenset()

        def inject(self, *args, **kwargs):
            raise RuntimeError("propagator bug")

        def extract(self, *args, **kwargs):
            raise RuntimeError("propagator bug")

    monkeypatch.setattr(propagate, "get_global_textmap", lambda: Broken())
    with usage_context(user_id="alice"):
        response = client(server).chat.completions.create(model="gpt-4", messages=MESSAGES)
    assert response.choices[0].message.content == server.reply
    assert "traceparent" not in server.last_request.headers
    span = tel.span()  # recorded and ended, with its usage
    assert span.end_time is not None and span.attributes[names.GEN_AI_USAGE_INPUT_TOKENS] > 0
def test_user_headers_win_and_propagation_can_be_turned_off(server, instrument):
    instrument(propagate=False)
    with usage_context(user_id="alice"):
        client(server).chat.completions.create(model="gpt-4", messages=MESSAGES,
                                               extra_headers={"x-tenant": "acme"})
    headers = server.last_request.headers
    assert "traceparent" not in headers and "baggage" not in headers and headers["x-tenant"] == "acme"


# --- LangChain -------------------------------------------------------------------------------------------------
def test_langchain_chat_openai(server, tel):
    from langchain_openai import ChatOpenAI

    server.reply = CHINESE
    llm = ChatOpenAI(model="gpt-4", base_url=server.base_url, api_key="test", max_retries=0)
    prompt = [("system", "You answer from the knowledge base."), ("human", "How do I reset my password?")]
    messages = [{"role": "system", "content": prompt[0][1]}, {"role": "user", "content": prompt[1][1]}]
    with usage_context(user_id="erin", department="support"):
        assert llm.invoke(prompt).content == CHINESE
        assert "".join(chunk.content for chunk in llm.stream(prompt)) == CHINESE
        llm.batch([prompt, prompt])
        asyncio.run(llm.ainvoke(prompt))
    spans = tel.spans()
    assert len(spans) == 5
    expected = (server.prompt_tokens("gpt-4", messages), count_cl100k(CHINESE))
    assert all(usage_of(s)[:2] == expected for s in spans)
    assert all(s.attributes[names.USER_ID] == "erin" for s in spans)
    assert tel.token_totals(names.USER_ID) == {("erin",): 5 * sum(expected)}
def test_uninstrument_restores_the_sdk(server):
    from openai.resources.chat.completions import Completions

    original = Completions.__dict__["create"]
    instrumentor = TokenUsageInstrumentor()
    tel, tracer_provider, meter_provider = make_telemetry()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    assert Completions.__dict__["create"] is not original
    instrumentor.uninstrument()
    assert Completions.__dict__["create"] is original
    client(server).chat.completions.create(model="gpt-4", messages=MESSAGES)
    assert tel.spans() == []


def test_fast_w3c_headers_equal_the_sdk_propagators(instrument):
    """The cached fast path writes exactly what opentelemetry's default propagators would."""
    from opentelemetry import baggage, context, propagate, trace

    instrument()
    recorder = TokenUsageInstrumentor().recorder
    token = context.attach(baggage.set_baggage("tenant", "a b,c=d;é"))
    try:
        with usage_context(user_id="ünïcode user", department="R&D", session_id="s 1"):
            handle = recorder.begin(names.OPERATION_CHAT, "openai", "gpt-4", server_address="127.0.0.1")
            try:
                with handle:
                    fast = recorder._propagation.w3c_headers(handle.span, handle.attribution)
                    # our three keys only: the inbound `tenant` entry is not ours to forward
                    ctx = trace.set_span_in_context(handle.span, context.Context())
                    for key in names.BAGGAGE_KEYS:
                        ctx = baggage.set_baggage(key, handle.attribution[key], ctx)
                    expected: dict[str, str] = {}
                    propagate.inject(expected, context=ctx)
                    assert recorder.outgoing_headers(handle) == fast
            finally:
                recorder.finish(handle)
    finally:
        context.detach(token)
    assert fast["traceparent"] == expected["traceparent"]
    assert sorted(fast["baggage"].split(",")) == sorted(expected["baggage"].split(","))
    assert "tenant" not in fast["baggage"]
def test_usage_chunks_are_asked_for_by_default_and_a_server_that_refuses_them_costs_no_error(server, tel):
    """Streams carry no usage unless asked; asking a server that rejects `stream_options` (older vLLM,
    some gateways: HTTP 400 naming it) must not fail the caller's call: it is sent again as the caller
    wrote it, and that server is not asked again."""
    from otel_tokens.integrations import openai as integration

    integration._state.no_stream_options.clear()
    c = client(server)
    chunks = [c for c in c.chat.completions.create(model="gpt-4", messages=MESSAGES, stream=True)]
    assert all(chunk.choices for chunk in chunks)  # the usage chunk we asked for is hidden from the caller
    assert server.requests[-1].body["stream_options"] == {"include_usage": True}
    refusal = {"error": {"message": "Unrecognized request argument supplied: stream_options", "type":
                         "invalid_request_error", "param": "stream_options", "code": None}}
    server.fail_next(400, body=refusal)
    before = len(server.requests)
    text = "".join(ch.choices[0].delta.content or "" for ch in
                   c.chat.completions.create(model="gpt-4", messages=MESSAGES, stream=True))
    assert text == server.reply and len(server.requests) == before + 2  # refused, then sent as written
    assert "stream_options" not in server.requests[-1].body
    for _ in c.chat.completions.create(model="gpt-4", messages=MESSAGES, stream=True):
        pass
    assert len(server.requests) == before + 3 and "stream_options" not in server.requests[-1].body  # not again
    # an error that is the caller's own still reaches the caller, unretried
    server.fail_next(400, body={"error": {"message": "bad model", "type": "invalid_request_error"}})
    with pytest.raises(openai.BadRequestError, match="bad model"):
        c.chat.completions.create(model="gpt-4", messages=MESSAGES, stream=True)
    first, refused_then_sent, not_asked, failed = tel.spans()
    assert usage_of(first)[2] == "reported"
    assert usage_of(refused_then_sent) == usage_of(not_asked) and usage_of(not_asked)[2] == "counted"
    assert names.ERROR_TYPE not in refused_then_sent.attributes
    assert failed.attributes[names.ERROR_TYPE] == "BadRequestError"
    integration._state.no_stream_options.clear()


class _RefusalError(Exception):
    def __init__(self, status: int, body: object) -> None:
        super().__init__(str(body))
        self.status_code, self.body = status, body


@pytest.mark.parametrize(("status", "body", "refused"), [
    (400, {"message": "Unrecognized request argument supplied: stream_options", "param": "stream_options"}, True),
    (400, {"message": "stream_options.include_usage is not supported"}, True),
    (422, {"detail": [{"loc": ["body", "stream_options"], "msg": "Extra inputs are not permitted"}]}, True),
    # FastAPI echoes the whole request in `input`: a different field's error is not a refusal of ours
    (422, {"detail": [{"loc": ["body", "messages"], "msg": "Field required",
                       "input": {"stream": True, "stream_options": {"include_usage": True}}}]}, False),
    (400, {"message": "tool_choice requires tools", "param": "tool_choice"}, False),
    (500, {"message": "stream_options broke us"}, False),
])
def test_only_a_refusal_that_names_stream_options_turns_them_off(status, body, refused):
    from otel_tokens.integrations.openai_request import refused_stream_options

    assert refused_stream_options(_RefusalError(status, body)) is refused
@pytest.mark.parametrize(("model", "chat", "responses", "reasoning"), [
    ("gpt-5-nano", {}, {}, True), ("o3-mini", {}, {}, True), ("openai/o4-mini", {}, {}, True),
    ("gpt-4o", {"reasoning_effort": "low"}, {"reasoning": {"effort": "low"}}, True),  # the request asks for it
    ("gpt-4o", {"extra_body": {"reasoning_effort": "low"}}, {"extra_body": {"reasoning": {"effort": "low"}}}, True),
    ("gpt-4", {}, {}, False), ("gpt-4o-mini", {}, {}, False),
])
def test_a_reasoning_model_without_usage_is_estimated_never_counted(server, tel, caplog, model, chat, responses,
                                                                      reasoning):
    """OpenAI's recorded traffic, usage stripped: gpt-5-nano's text re-tokenized to 27 of 228 billed output
    tokens (192 of them reasoning), and was called `counted`. Both SDK shapes."""
    from otel_tokens import logs as safety

    safety._reported.discard(f"reasoning:{model}")
    server.reply, server.usage_mode = ENGLISH, "never"
    client(server).chat.completions.create(model=model, messages=MESSAGES, **chat)
    client(server).responses.create(model=model, input="hi", **responses)
    sources = [s.attributes[names.LLM_USAGE_SOURCE] for s in tel.spans()]
    assert sources == (["estimated"] * 2 if reasoning else ["counted"] * 2), model
    warned = [r for r in caplog.records if "is a reasoning model" in r.getMessage()]
    assert len(warned) == (1 if reasoning else 0)  # once per model, naming it
    assert not reasoning or model in warned[0].getMessage()
@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_call_reply_without_usage_is_estimated_and_the_server_s_usage_is_reported(server, tel, stream):
    """A reply that calls a tool bills its name and arguments and the provider's framing around them
    (gpt-4o: 16 billed, 9 in the name and arguments): counted from the text it is an estimate, never
    `counted`; with the server's usage it is exact."""
    from tests.support.openai_server import TOOL_CALL_FRAMING

    server.tool_call = ("get_weather", '{"city": "Paris", "unit": "celsius"}')
    truth = count_cl100k("get_weather") + count_cl100k('{"city": "Paris", "unit": "celsius"}') + TOOL_CALL_FRAMING
    for mode in ("never", "auto"):
        server.usage_mode = mode
        reply = client(server).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=stream)
        if stream:
            list(reply)
    without, with_usage = tel.spans()
    assert usage_of(without)[1:] == (truth - TOOL_CALL_FRAMING, "estimated")
    assert usage_of(with_usage)[1:] == (truth, "reported")
@pytest.mark.parametrize("stream", [False, True])
def test_a_local_model_s_reply_counts_the_eos_its_server_bills(server, tel, stream):
    """vLLM, TGI and transformers count the EOS that ended a choice (examples/local_model_server.py does
    the same from its generate tensors); its text does not show it. Re-tokenized, it was one short per
    choice (a legacy completion 2 against 3); with a stop string, whose tokens are billed and not
    returned, the count is an estimate."""
    server.reply, server.usage_mode = ENGLISH, "never"
    model = "local-qwen2.5-chat"
    truth = server.completion_tokens(model, ENGLISH)  # the text's tokens + the EOS
    for extra in ({}, {"n": 2}, {"stop": ["\n\n"]}):
        reply = client(server).chat.completions.create(model=model, messages=MESSAGES, stream=stream, **extra)
        if stream:
            list(reply)
    plain, two, stopped = tel.spans()
    assert usage_of(plain)[1:] == (truth, "counted")
    assert usage_of(two)[1:] == (2 * truth, "counted")
    assert usage_of(stopped)[1:] == (truth, "estimated")
