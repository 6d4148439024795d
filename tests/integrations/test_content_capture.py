"""Opt-in content capture: the exact semconv messages on openai spans, and nothing without the opt-in."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from otel_tokens import TokenUsageInstrumentor, names
from otel_tokens.config import load_settings
from otel_tokens.config.settings import Settings
from tests.support.openai_server import OpenAIServer
from tests.support.telemetry import make_telemetry

REPLY = "Reset it under Settings."
MESSAGES = [
    {"role": "system", "content": "Answer from the knowledge base."},
    {"role": "user", "content": [{"type": "text", "text": "How do I reset my password?"},
                                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "kb", "arguments": '{"q": "reset"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Settings > Security > Reset"},
]
INPUT = [
    {"role": "system", "parts": [{"type": "text", "content": "Answer from the knowledge base."}]},
    {"role": "user", "parts": [{"type": "text", "content": "How do I reset my password?"}, {"type": "image_url"}]},
    {"role": "assistant",
     "parts": [{"type": "tool_call", "id": "call_1", "name": "kb", "arguments": '{"q": "reset"}'}]},
    {"role": "tool",
     "parts": [{"type": "tool_call_response", "id": "call_1", "response": "Settings > Security > Reset"}]},
]


def _output(n: int = 1) -> list[dict]:
    return [{"role": "assistant", "parts": [{"type": "text", "content": REPLY}], "finish_reason": "stop"}] * n


@pytest.fixture
def captured():
    tel, tracer_provider, meter_provider = make_telemetry()
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            settings=Settings(capture_content=True))
    try:
        with OpenAIServer(REPLY) as server:
            yield tel, openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0), server
    finally:
        instrumentor.uninstrument()


def content(span) -> dict:
    return {k: json.loads(v) for k, v in span.attributes.items() if k in names.CONTENT_ATTRIBUTES}
def test_chat_plain_and_streamed_with_several_choices(captured):
    tel, client, _ = captured
    client.chat.completions.create(model="gpt-4", messages=MESSAGES, n=2)
    chunks = list(client.chat.completions.create(model="gpt-4", messages=MESSAGES, stream=True, n=2))
    assert chunks
    plain, streamed = tel.spans()
    assert content(plain) == {names.GEN_AI_INPUT_MESSAGES: INPUT, names.GEN_AI_OUTPUT_MESSAGES: _output(2)}
    assert content(streamed) == {names.GEN_AI_INPUT_MESSAGES: INPUT, names.GEN_AI_OUTPUT_MESSAGES: _output(2)}
    # the image's data never lands on the span
    assert "AAAA" not in plain.attributes[names.GEN_AI_INPUT_MESSAGES]
def test_a_stream_cut_short_captures_what_the_caller_received(captured):
    tel, client, _ = captured
    stream = client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}], stream=True)
    received = ""
    for chunk in stream:
        received += chunk.choices[0].delta.content or ""
        if received:
            break
    stream.close()
    (span,) = tel.spans()
    (message,) = content(span)[names.GEN_AI_OUTPUT_MESSAGES]
    assert message["parts"] == [{"type": "text", "content": received}] and received != REPLY
    assert message["finish_reason"] == ""  # it never finished
def test_completions_responses_embeddings_and_async(captured):
    tel, client, _ = captured
    client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Write a line")
    client.responses.create(model="gpt-4o-mini", input="Reset?", instructions="Be brief.")
    client.embeddings.create(model="text-embedding-3-small", input="Reset?")

    async def call() -> None:
        async_client = openai.AsyncOpenAI(base_url=str(client.base_url), api_key="x", max_retries=0)
        async for _ in await async_client.chat.completions.create(
                model="gpt-4", messages=[{"role": "user", "content": "hi"}], stream=True):
            pass
        await async_client.close()

    asyncio.run(call())
    completion, response, embedding, streamed = tel.spans()
    assert content(completion) == {
        names.GEN_AI_INPUT_MESSAGES: [{"role": "user", "parts": [{"type": "text", "content": "Write a line"}]}],
        names.GEN_AI_OUTPUT_MESSAGES: _output()}
    assert content(response) == {
        names.GEN_AI_INPUT_MESSAGES: [{"role": "user", "parts": [{"type": "text", "content": "Reset?"}]}],
        names.GEN_AI_SYSTEM_INSTRUCTIONS: [{"type": "text", "content": "Be brief."}],
        names.GEN_AI_OUTPUT_MESSAGES: [{"role": "assistant", "parts": [{"type": "text", "content": REPLY}],
                                        "finish_reason": "completed"}]}
    assert content(embedding) == {}
    assert content(streamed)[names.GEN_AI_OUTPUT_MESSAGES] == _output()


def test_off_by_default_and_read_from_the_standard_variable():
    assert load_settings({}).capture_content is False
    for value, expected in (("true", True), ("false", False), ("SPAN_ONLY", True), ("span_and_event", True),
                            ("NO_CONTENT", False)):
        settings = load_settings({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": value})
        assert settings.capture_content is expected and settings.errors == ()
    settings = load_settings({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "maybe"})
    assert settings.capture_content is False
    assert "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT: 'maybe'" in settings.errors[0]
def test_nothing_captured_without_the_opt_in():
    tel, tracer_provider, meter_provider = make_telemetry()
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, settings=Settings())
    try:
        with OpenAIServer(REPLY) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            client.chat.completions.create(model="gpt-4", messages=MESSAGES)
            list(client.chat.completions.create(model="gpt-4", messages=MESSAGES, stream=True))
    finally:
        instrumentor.uninstrument()
    assert len(tel.spans()) == 2 and not any(content(s) for s in tel.spans())
