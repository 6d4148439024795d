"""Hostile and broken responses from OpenAI-compatible servers, property-based.

Generated response bodies and SSE byte streams (missing or null fields, wrong types, negative or huge
token counts, unknown finish reasons, non-UTF-8 bytes, truncated bodies, streams cut mid-event,
usage in odd places such as `choices[0].usage`, error events, HTTP error statuses) are served
in-process through `httpx2.MockTransport`. Every call is made twice against the same bytes: bare
(inside `suppress_instrumentation()`, where our wrapper is a pass-through) and instrumented. Then:

- the caller sees exactly the same thing: the same result (`model_dump()` of the response, of every
  chunk) or the same exception (type and message), and that exception is the SDK's, never ours;
- our code raised nothing internally: an `internal error` log record from `otel_tokens` fails the test;
- what the span records is right or absent: the server's usage block when it has a usable one
  (top level first, else `choices[0].usage`; for a stream the last chunk that carries one), exactly;
  otherwise a local count (`counted` / `estimated`) of non-negative ints, never a number from a
  broken block.

"Usable" is judged on what the uninstrumented caller got (the SDK coerces lax-valid values such as
`"5"` or `5.0` to `5` when the whole block validates): a count is a non-negative integer below 2**31
(an integral JSON float counts as that integer; booleans do not), cached <= input, reasoning <= output.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx2
import openai
import pydantic
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st
from openai._models import construct_type
from openai.types.chat import ChatCompletionChunk
from opentelemetry.instrumentation.utils import suppress_instrumentation

from otel_tokens import TokenUsageInstrumentor, names, safety
from otel_tokens.config import Settings
from tests.support.telemetry import LogRecords, Telemetry, make_telemetry

pytestmark = pytest.mark.e2e  # every test here starts a server or a binary

MAX = 2**31
BASE_URL = "http://hostile.local/v1"
MESSAGES = [{"role": "system", "content": "Answer from the knowledge base."},
            {"role": "user", "content": "How do I reset my password? 怎么重置密码？"}]
REQUEST_MODELS = st.sampled_from(["gpt-4o-mini", "gpt-4", "qwen2.5-7b-instruct", "glm-4-9b-chat"])


def hypothesis_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# --- strategies: hostile JSON -----------------------------------------------------------------------------------

def pick(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, by weight (`st.one_of` flattens nested one_of branches and picks uniformly, so
    a structured value next to a seven-way junk choice would come up one time in eight)."""
    table = [s for weight, s in options for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


LINE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12)
# a value of the wrong type, as often iterable as not (fresh copies: the tests edit generated trees)
JUNK = pick((4, st.sampled_from([None, True, False, 0, 1, -1, 2.5, "", [], [1], {}, {"x": 1}]).map(copy.deepcopy)),
            (1, LINE_TEXT))
COUNT = pick(
    (4, st.integers(0, 5000)), (2, st.sampled_from([0, 1, MAX - 1, MAX, -1])),
    (1, st.integers(-(2**40), -1)), (1, st.integers(MAX, 2**80)),
    (1, st.integers(0, 5000).map(float)), (1, st.floats(allow_nan=False, allow_infinity=False)),
    (1, st.one_of(st.booleans(), st.none())), (1, st.one_of(st.integers(0, 99).map(str), LINE_TEXT)),
    (1, st.one_of(st.lists(st.integers(0, 9), max_size=2), st.just({}))),
)


def details(key: str) -> st.SearchStrategy[Any]:
    return pick((1, JUNK), (3, st.fixed_dictionaries({}, optional={key: COUNT, "audio_tokens": COUNT})))


@st.composite
def sane_usage(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed block (chat or Responses key names), counts anywhere in [0, 2**31)."""
    size = st.one_of(st.integers(0, 3000), st.sampled_from([0, 1, MAX - 1]))
    inp, out = draw(size), draw(size)
    prefix_in, prefix_out = draw(st.sampled_from([("prompt", "completion"), ("input", "output")]))
    usage: dict[str, Any] = {f"{prefix_in}_tokens": inp, "total_tokens": inp + out}
    if draw(st.integers(0, 4)):  # embeddings-style blocks have no output count
        usage[f"{prefix_out}_tokens"] = out
        if draw(st.booleans()):
            usage[f"{prefix_out}_tokens_details"] = {"reasoning_tokens": draw(st.integers(0, out))}
    if draw(st.booleans()):
        usage[f"{prefix_in}_tokens_details"] = {"cached_tokens": draw(st.integers(0, inp))}
    return usage


HOSTILE_USAGE = st.fixed_dictionaries({}, optional={
    "prompt_tokens": COUNT, "completion_tokens": COUNT, "total_tokens": COUNT,
    "input_tokens": COUNT, "output_tokens": COUNT,
    "prompt_tokens_details": details("cached_tokens"), "input_tokens_details": details("cached_tokens"),
    "completion_tokens_details": details("reasoning_tokens"), "output_tokens_details": details("reasoning_tokens"),
})
USAGE = pick((2, JUNK), (3, sane_usage()), (3, HOSTILE_USAGE))

RESPONSE_MODEL = pick((2, st.sampled_from(["gpt-4o-mini-2024-07-18", "qwen2.5-7b-instruct", "", "\ud800x"])),
                      (1, LINE_TEXT), (1, JUNK))
FINISH_REASON = pick(
    (3, st.sampled_from(["stop", "length", "tool_calls", "content_filter", "function_call", "eos", "abort", ""])),
    (1, JUNK))
CONTENT = pick((1, JUNK), (4, st.text(max_size=40)), (1, st.sampled_from(["\ud800", "ok\udfff", "\ud83d\ude00"])))
FUNCTION = st.fixed_dictionaries({}, optional={"name": CONTENT, "arguments": CONTENT})
TOOL_CALL = pick((1, JUNK), (3, st.fixed_dictionaries({}, optional={
    "index": st.one_of(st.integers(0, 2), JUNK), "id": LINE_TEXT, "type": st.sampled_from(["function", "x"]),
    "function": pick((1, JUNK), (3, FUNCTION)),
})))
TOOL_CALLS = pick((1, JUNK), (1, st.lists(TOOL_CALL, max_size=2)))
MESSAGE = pick((1, JUNK), (4, st.fixed_dictionaries({}, optional={
    "role": st.one_of(st.sampled_from(["assistant", "user"]), JUNK), "content": CONTENT,
    "tool_calls": TOOL_CALLS, "refusal": st.one_of(st.none(), LINE_TEXT),
})))


def choice(body: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return pick((1, JUNK), (4, st.fixed_dictionaries({}, optional={
        "index": st.one_of(st.integers(0, 3), JUNK), "finish_reason": FINISH_REASON, "logprobs": st.none(),
        "usage": USAGE, **body})))


def response_body(object_name: str, choice_fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({}, optional={
        "id": st.one_of(LINE_TEXT, JUNK), "object": st.sampled_from([object_name, "weird"]),
        "created": st.one_of(st.integers(0, 2**40), JUNK), "model": RESPONSE_MODEL,
        "choices": pick((2, JUNK), (1, st.just([])), (4, st.lists(choice(choice_fields), min_size=1, max_size=3))),
        "usage": USAGE, "system_fingerprint": st.one_of(st.none(), LINE_TEXT), "extra_field": JUNK,
    })


EMBEDDING = pick((1, JUNK), (3, st.fixed_dictionaries({"object": st.just("embedding")}, optional={
    "index": st.one_of(st.integers(0, 3), JUNK),
    "embedding": pick((3, st.lists(st.floats(-1, 1, width=32), max_size=3)), (1, JUNK)),
})))
BODIES = {
    "chat": response_body("chat.completion", {"message": MESSAGE}),
    "text_completion": response_body("text_completion", {"text": CONTENT}),
    "embeddings": st.fixed_dictionaries({}, optional={
        "object": st.sampled_from(["list", "weird"]), "data": pick((3, st.lists(EMBEDDING, max_size=2)), (1, JUNK)),
        "model": RESPONSE_MODEL, "usage": USAGE}),
}
CHUNKS = {
    "chat": response_body("chat.completion.chunk", {"delta": MESSAGE}),
    "text_completion": response_body("text_completion", {"text": CONTENT}),
}
# Realistic bodies, then broken in a few places: every node of the tree is equally likely to be hit, where the
# generated-from-scratch bodies above rarely reach deep fields (a `tool_calls` of `true` is five levels down).
OPTIONAL_USAGE = pick((2, st.none()), (3, sane_usage()))
REAL_TOOL_CALLS = st.lists(st.builds(
    lambda i, name, arguments: {"index": i, "id": f"call_{i}", "type": "function",
                                "function": {"name": name, "arguments": arguments}},
    st.integers(0, 2), st.sampled_from(["search_kb", "get_user"]), st.sampled_from(['{"q": "reset"}', "{}"])),
    max_size=2)
REAL_MESSAGE = st.fixed_dictionaries(
    {"role": st.just("assistant"), "content": st.one_of(st.none(), st.text(max_size=30))},
    optional={"tool_calls": REAL_TOOL_CALLS, "refusal": st.none()})
REAL_FINISH = st.sampled_from(["stop", "length", "tool_calls", "content_filter"])


def real_body(object_name: str, choice: st.SearchStrategy[Any], **more: st.SearchStrategy[Any]
              ) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({
        "id": st.just("resp-1"), "object": st.just(object_name), "created": st.just(1_750_000_000),
        "model": st.sampled_from(["gpt-4o-mini-2024-07-18", "qwen2.5-7b-instruct"]),
        "choices": st.lists(choice, min_size=1, max_size=2), **more})


REAL_BODIES = {
    "chat": real_body("chat.completion", st.fixed_dictionaries(
        {"index": st.just(0), "message": REAL_MESSAGE, "finish_reason": REAL_FINISH, "logprobs": st.none()},
        optional={"usage": sane_usage()}), usage=OPTIONAL_USAGE),
    "text_completion": real_body("text_completion", st.fixed_dictionaries(
        {"index": st.just(0), "text": st.text(max_size=30), "finish_reason": REAL_FINISH, "logprobs": st.none()},
        optional={"usage": sane_usage()}), usage=OPTIONAL_USAGE),
    "embeddings": st.fixed_dictionaries({
        "object": st.just("list"), "model": st.just("text-embedding-3-small"), "usage": OPTIONAL_USAGE,
        "data": st.lists(st.builds(lambda i, v: {"object": "embedding", "index": i, "embedding": v},
                                   st.integers(0, 1), st.lists(st.floats(-1, 1, width=32), min_size=1, max_size=3)),
                         min_size=1, max_size=2)}),
}
REAL_CHUNKS = {
    "chat": real_body("chat.completion.chunk", st.fixed_dictionaries(
        {"index": st.just(0), "delta": REAL_MESSAGE, "finish_reason": st.one_of(st.none(), REAL_FINISH)}),
        usage=st.none()),
    "text_completion": real_body("text_completion", st.fixed_dictionaries(
        {"index": st.just(0), "text": st.text(max_size=20), "finish_reason": st.one_of(st.none(), REAL_FINISH)})),
}


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _nodes(child, (*path, key))


@st.composite
def broken(draw: st.DrawFn, template: st.SearchStrategy[Any]) -> Any:
    """A realistic value with one to four nodes deleted, nulled, wrapped in a list or replaced by junk."""
    value = copy.deepcopy(draw(template))
    for _ in range(draw(st.integers(1, 4))):
        nodes = list(_nodes(value))[1:]
        if not nodes:
            break
        *parent_path, key = draw(st.sampled_from(nodes))
        parent = value
        for step in parent_path:
            parent = parent[step]
        action = draw(st.sampled_from(["junk", "junk", "count", "delete", "null", "wrap"]))
        if action == "delete":
            del parent[key]
        elif action == "null":
            parent[key] = None
        elif action == "wrap":
            parent[key] = [parent[key]]
        else:
            parent[key] = copy.deepcopy(draw(JUNK if action == "junk" else COUNT))  # never edit a `just({})`
    return value


# No usage anywhere, so the local count reads every hostile choice shape (text, message, delta, tool calls).
def no_usage(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    listed = st.lists(st.fixed_dictionaries(fields), min_size=1, max_size=2)
    return st.fixed_dictionaries({"choices": pick((1, JUNK), (4, listed))})


NO_USAGE = {"chat": no_usage(message=MESSAGE), "text_completion": no_usage(text=CONTENT),
            "embeddings": st.fixed_dictionaries({"data": st.lists(EMBEDDING, min_size=1, max_size=2)})}
NO_USAGE_CHUNKS = {"chat": no_usage(delta=MESSAGE), "text_completion": no_usage(text=CONTENT)}
HOSTILE_BODIES = {op: pick((2, BODIES[op]), (3, broken(REAL_BODIES[op])), (1, REAL_BODIES[op]), (3, NO_USAGE[op]))
                  for op in BODIES}
HOSTILE_CHUNKS = {op: pick((2, CHUNKS[op]), (3, broken(REAL_CHUNKS[op])), (2, REAL_CHUNKS[op]),
                           (2, NO_USAGE_CHUNKS[op])) for op in CHUNKS}
BAD_BYTES = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xfe\xff", b"\x00"])


@dataclass(frozen=True)
class Wire:
    """One HTTP response as the hostile server sends it."""

    status: int
    content_type: str | None
    chunks: tuple[bytes, ...]  # network reads, in order

    def response(self, asynchronous: bool) -> httpx2.Response:
        headers = {"content-type": self.content_type} if self.content_type else {}
        chunks = self.chunks
        if asynchronous:
            async def body() -> Any:
                for chunk in chunks:
                    yield chunk
            return httpx2.Response(self.status, headers=headers, content=body())
        return httpx2.Response(self.status, headers=headers, content=iter(chunks))


@st.composite
def damaged(draw: st.DrawFn, raw: bytes) -> tuple[bytes, ...]:
    """The bytes cut short, with invalid UTF-8 put in, replaced by noise, then split into network reads."""
    kind = draw(st.sampled_from(["intact"] * 10 + ["cut", "bad_bytes", "cut_and_bad", "noise"]))
    if kind in ("cut", "cut_and_bad"):
        raw = raw[:draw(st.integers(0, len(raw)))]
    if kind in ("bad_bytes", "cut_and_bad"):
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(BAD_BYTES) + raw[at:]
    if kind == "noise":
        raw = draw(st.binary(max_size=40))
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=3)))
    bounds = [0, *cuts, len(raw)]
    return tuple(raw[a:b] for a, b in itertools.pairwise(bounds))


def encode(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def body_wire(draw: st.DrawFn, operation: str) -> Wire:
    payload = draw(pick((1, JUNK), (8, HOSTILE_BODIES[operation])))
    raw = encode(payload, draw(st.booleans()))
    status = draw(st.sampled_from([200] * 20 + [400, 404, 422, 429, 500, 503]))
    content_type = draw(st.sampled_from(["application/json"] * 4 + ["application/json; charset=utf-8",
                                                                     "text/plain", None]))
    return Wire(status, content_type, draw(damaged(raw)))


@st.composite
def sse_event(draw: st.DrawFn, operation: str) -> str:
    chunk = draw(HOSTILE_CHUNKS[operation])
    text = json.dumps(chunk, ensure_ascii=draw(st.booleans()))
    kind = draw(st.sampled_from(["data"] * 6 + ["usage_only", "multiline", "nospace", "fields", "comment", "error",
                                                "error_event", "garbage", "done"]))
    if kind == "usage_only":  # the include_usage chunk
        return "data: " + json.dumps({"id": "u", "object": "chat.completion.chunk", "choices": [],
                                      "usage": draw(USAGE)})
    if kind == "multiline":
        at = draw(st.integers(0, len(text)))
        return f"data: {text[:at]}\ndata: {text[at:]}"
    if kind == "nospace":
        return "data:" + text
    if kind == "fields":
        return f"id: {draw(LINE_TEXT)}\nretry: {draw(LINE_TEXT)}\ndata: {text}"
    if kind == "comment":
        return ": keep-alive " + draw(LINE_TEXT)
    if kind == "error":
        return "data: " + json.dumps({"error": draw(st.one_of(JUNK, st.fixed_dictionaries(
            {"message": st.one_of(LINE_TEXT, JUNK)}, optional={"code": JUNK})))})
    if kind == "error_event":
        return "event: error\ndata: " + json.dumps({"error": {"message": draw(LINE_TEXT)}})
    if kind == "garbage":
        return "data: " + draw(LINE_TEXT)
    if kind == "done":
        return "data: [DONE]"
    return "data: " + text


@st.composite
def sse_wire(draw: st.DrawFn, operation: str) -> Wire:
    events = draw(st.lists(sse_event(operation), max_size=6))
    if draw(st.booleans()):
        events.append("data: [DONE]")
    separator = draw(st.sampled_from(["\n\n"] * 4 + ["\r\n\r\n", "\r\r", "\n\n\n"]))
    raw = "".join(event + separator for event in events).encode("utf-8", "surrogatepass")
    status = draw(st.sampled_from([200] * 10 + [400, 500]))
    content_type = draw(st.sampled_from(["text/event-stream"] * 4 + ["application/json", None]))
    return Wire(status, content_type, draw(damaged(raw)))


# --- the expected usage, from what the uninstrumented caller got -------------------------------------------------

class Expected(NamedTuple):
    input: int | None
    output: int | None
    cached: frozenset[int]  # values the span may carry (or carry none)
    reasoning: frozenset[int]


def trusted(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 0 <= value < MAX else None


def first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def usage_block(usage: Any) -> Expected | None:
    if not isinstance(usage, dict):
        return None
    inp = first(trusted(usage.get("prompt_tokens")), trusted(usage.get("input_tokens")))
    out = first(trusted(usage.get("completion_tokens")), trusted(usage.get("output_tokens")))
    if inp is None and out is None:
        return None

    def detail(keys: tuple[str, str], name: str, limit: int | None) -> frozenset[int]:
        found = {trusted(d.get(name)) for d in (usage.get(k) for k in keys) if isinstance(d, dict)}
        return frozenset(v for v in found if v is not None and limit is not None and v <= limit)

    return Expected(inp, out, detail(("prompt_tokens_details", "input_tokens_details"), "cached_tokens", inp),
                    detail(("completion_tokens_details", "output_tokens_details"), "reasoning_tokens", out))


def response_usage(dumped: Any) -> Expected | None:
    """Top-level usage first, else choices[0].usage."""
    if not isinstance(dumped, dict):
        return None
    found = usage_block(dumped.get("usage"))
    listed = dumped.get("choices")
    if found is None and isinstance(listed, list) and listed and isinstance(listed[0], dict):
        found = usage_block(listed[0].get("usage"))
    return found


def stream_usage(dumped_chunks: list[Any]) -> Expected | None:
    """The last chunk with a usable block wins (servers that repeat usage send running totals)."""
    found = None
    for dumped in dumped_chunks:
        found = response_usage(dumped) or found
    return found


# --- running a call bare and instrumented -----------------------------------------------------------------------

@dataclass
class Outcome:
    result_type: type | None = None
    value: Any = None  # the dumped response, or the list of dumped chunks
    error: BaseException | None = None

    def seen(self) -> tuple[Any, ...]:
        error = None if self.error is None else (type(self.error), str(self.error))
        return self.result_type, repr(self.value), error


def plain(value: Any) -> Any:
    """A model as plain dicts, fields and extra fields alike, without pydantic's serialiser."""
    if isinstance(value, pydantic.BaseModel):
        return {k: plain(v) for k, v in {**value.__dict__, **(value.__pydantic_extra__ or {})}.items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def dump(value: Any) -> Any:
    """What the caller sees of a response or chunk: `model_dump()`; never raises (pydantic cannot serialise a
    lone surrogate that a server smuggled in as raw bytes, and then the model is walked by hand)."""
    if isinstance(value, pydantic.BaseModel):
        try:
            return value.model_dump(warnings=False)
        except Exception:
            return plain(value)
    return value


# operation -> (the SDK resource whose `create` is called, the request's arguments besides model and stream)
CALLS: dict[str, tuple[Callable[[Any], Any], dict[str, Any]]] = {
    "chat": (lambda client: client.chat.completions, {"messages": MESSAGES}),
    "text_completion": (lambda client: client.completions, {"prompt": "Summarise the handbook 请总结"}),
    "embeddings": (lambda client: client.embeddings, {"input": ["first chunk", "第二段"]}),
}


def create(client: Any, operation: str, model: str, stream: bool) -> Any:
    resource, arguments = CALLS[operation]
    return resource(client).create(model=model, **arguments, **({"stream": True} if stream else {}))


def sync_client(handler: Callable[[httpx2.Request], httpx2.Response]) -> openai.OpenAI:
    return openai.OpenAI(api_key="x", base_url=BASE_URL, max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def async_client(handler: Callable[[httpx2.Request], httpx2.Response]) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="x", base_url=BASE_URL, max_retries=0,
                              http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))


def run_sync(client: openai.OpenAI, operation: str, model: str, stream: bool) -> Outcome:
    outcome = Outcome()
    try:
        result = create(client, operation, model, stream)
        outcome.result_type = result.__class__
        if stream:
            outcome.value = []
            for chunk in result:
                outcome.value.append(dump(chunk))
        else:
            outcome.value = dump(result)
    except Exception as exc:
        outcome.error = exc
    return outcome


def run_async(client: openai.AsyncOpenAI, operation: str, model: str, stream: bool) -> Outcome:
    async def main() -> Outcome:
        outcome = Outcome()
        try:
            result = await create(client, operation, model, stream)
            outcome.result_type = result.__class__
            if stream:
                outcome.value = []
                async for chunk in result:
                    outcome.value.append(dump(chunk))
            else:
                outcome.value = dump(result)
        except Exception as exc:
            outcome.error = exc
        return outcome

    return asyncio.run(main())


@dataclass
class Harness:
    tel: Telemetry
    logs: LogRecords = field(default_factory=LogRecords)

    def reset(self) -> None:
        self.tel.spans_exporter.clear()
        self.logs.records.clear()
        # internal errors are logged once per process: forget them so every example (and shrinking) sees its own
        safety._reported.difference_update({k for k in safety._reported if k.startswith("internal:")})

    def both(self, run: Callable[[], Outcome]) -> tuple[Outcome, Outcome, Any]:
        """(bare, instrumented, the instrumented call's span)."""
        self.reset()
        with suppress_instrumentation():
            bare = run()
        assert self.tel.spans() == [], "suppress_instrumentation() must make the wrapper a pass-through"
        before = self.tel.token_totals(names.GEN_AI_TOKEN_TYPE, names.LLM_USAGE_SOURCE)
        instrumented = run()
        internal = [r.getMessage() for r in self.logs.records if "internal error" in r.getMessage()]
        assert not internal, internal
        span = self.tel.span()
        # the token counter got exactly what the span carries
        after = self.tel.token_totals(names.GEN_AI_TOKEN_TYPE, names.LLM_USAGE_SOURCE)
        added = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
        source = span.attributes.get(names.LLM_USAGE_SOURCE)
        assert added == {(token_type, source): span.attributes[key] for token_type, key in (
            (names.TOKEN_TYPE_INPUT, names.GEN_AI_USAGE_INPUT_TOKENS),
            (names.TOKEN_TYPE_OUTPUT, names.GEN_AI_USAGE_OUTPUT_TOKENS)) if span.attributes.get(key)}
        return bare, instrumented, span


@pytest.fixture
def harness() -> Iterator[Harness]:
    yield from _harness(Settings())


@pytest.fixture
def harness_usage_chunk() -> Iterator[Harness]:
    yield from _harness(Settings(stream_include_usage=True))


def _harness(config: Settings) -> Iterator[Harness]:
    tel, tracer_provider, meter_provider = make_telemetry()
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, settings=config)
    harness = Harness(tel)
    logger = logging.getLogger("otel_tokens")
    logger.addHandler(harness.logs)
    try:
        yield harness
    finally:
        logger.removeHandler(harness.logs)
        instrumentor.uninstrument()


# --- the checks -------------------------------------------------------------------------------------------------

USAGE_KEYS = (names.GEN_AI_USAGE_INPUT_TOKENS, names.GEN_AI_USAGE_OUTPUT_TOKENS,
              names.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, names.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS)


def check_same_for_caller(bare: Outcome, instrumented: Outcome) -> None:
    assert instrumented.seen() == bare.seen()
    if instrumented.error is not None:
        assert not type(instrumented.error).__module__.startswith("otel_tokens"), instrumented.error


def check_span(span: Any, outcome: Outcome, expected: Expected | None, operation: str, failed_at_call: bool) -> None:
    attributes = dict(span.attributes)
    if outcome.error is not None:
        assert attributes[names.ERROR_TYPE] == type(outcome.error).__qualname__
    else:
        assert names.ERROR_TYPE not in attributes
    for key in USAGE_KEYS:
        value = attributes.get(key)
        assert value is None or (type(value) is int and 0 <= value < MAX), (key, value)
    if failed_at_call:  # no response at all: nothing to record
        assert not any(key in attributes for key in (*USAGE_KEYS, names.LLM_USAGE_SOURCE)), attributes
        return
    if expected is None:
        assert attributes.get(names.LLM_USAGE_SOURCE) in (names.SOURCE_COUNTED, names.SOURCE_ESTIMATED), attributes
        assert names.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS not in attributes
        assert names.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS not in attributes
        return
    assert attributes.get(names.LLM_USAGE_SOURCE) == names.SOURCE_REPORTED, (attributes, expected)
    assert attributes.get(names.GEN_AI_USAGE_INPUT_TOKENS) == expected.input, (attributes, expected)
    output = None if operation == "embeddings" else expected.output
    assert attributes.get(names.GEN_AI_USAGE_OUTPUT_TOKENS) == output, (attributes, expected)
    cached = attributes.get(names.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS)
    assert cached is None or cached in expected.cached, (attributes, expected)
    reasoning = attributes.get(names.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS)
    assert reasoning is None or reasoning in expected.reasoning, (attributes, expected)


def check_call(harness: Harness, run: Callable[[], Outcome], operation: str, stream: bool) -> None:
    bare, instrumented, span = harness.both(run)
    check_same_for_caller(bare, instrumented)
    failed_at_call = instrumented.result_type is None
    if stream:
        expected = None if failed_at_call else stream_usage(instrumented.value)
    else:
        expected = None if failed_at_call else response_usage(instrumented.value)
    if currently_in_test_context():  # `--hypothesis-show-statistics` shows how the examples spread
        event("outcome: " + ("error before a response" if failed_at_call else
                             ("error mid-stream" if instrumented.error is not None else "ok")))
        event("usage: " + ("none" if failed_at_call else "reported" if expected is not None else "counted locally"))
    check_span(span, instrumented, expected, operation, failed_at_call)


def serve(wire: Wire, asynchronous: bool = False) -> Callable[[httpx2.Request], httpx2.Response]:
    return lambda request: wire.response(asynchronous)


# --- properties -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("operation", ["chat", "text_completion", "embeddings"])
@hypothesis_settings(400)
@given(data=st.data(), model=REQUEST_MODELS)
def test_hostile_response_bodies(harness: Harness, operation: str, data: st.DataObject, model: str) -> None:
    wire = data.draw(body_wire(operation), label="wire")
    client = sync_client(serve(wire))
    check_call(harness, lambda: run_sync(client, operation, model, stream=False), operation, stream=False)


@pytest.mark.parametrize("operation", ["chat", "text_completion"])
@hypothesis_settings(400)
@given(data=st.data(), model=REQUEST_MODELS)
def test_hostile_sse_streams(harness: Harness, operation: str, data: st.DataObject, model: str) -> None:
    wire = data.draw(sse_wire(operation), label="wire")
    client = sync_client(serve(wire))
    check_call(harness, lambda: run_sync(client, operation, model, stream=True), operation, stream=True)


@hypothesis_settings(200)
@given(data=st.data(), stream=st.booleans(), model=REQUEST_MODELS)
def test_hostile_responses_async(harness: Harness, data: st.DataObject, stream: bool, model: str) -> None:
    operation = data.draw(st.sampled_from(["chat", "text_completion", *([] if stream else ["embeddings"])]),
                          label="operation")
    wire = data.draw(sse_wire(operation) if stream else body_wire(operation), label="wire")
    client = async_client(serve(wire, asynchronous=True))
    check_call(harness, lambda: run_async(client, operation, model, stream), operation, stream)


# The minimal failing inputs of the bugs these properties found, kept as fixed cases.
KNOWN = [
    ("chat", False, b'{"choices": [{"message": {"tool_calls": true}}]}'),
    ("chat", True, b'data: {"choices": true}\n\n'),
    ("chat", True, b'data: {"choices": [{"delta": {"content": {"x": 1}}}]}\n\n'),
    ("chat", True, b'data: {"choices": [{"delta": {"tool_calls": true}}]}\n\n'),
    ("text_completion", True, b'data: {"choices": [{"text": true}]}\n\n'),
    # a lone surrogate smuggled in as raw bytes: the SDK returns a model that pydantic cannot dump
    ("chat", False, b'{"\xed\xa0\x80id": null, "usage": {"prompt_tokens": 3, "total_tokens": 3}}'),
]


@pytest.mark.parametrize(("operation", "stream", "raw"), KNOWN)
@pytest.mark.parametrize("asynchronous", [False, True])
def test_known_hostile_responses(harness: Harness, operation: str, stream: bool, raw: bytes,
                                 asynchronous: bool) -> None:
    wire = Wire(200, "text/event-stream" if stream else "application/json", (raw,))
    if asynchronous:
        client: Any = async_client(serve(wire, asynchronous=True))
        check_call(harness, lambda: run_async(client, operation, "gpt-4o-mini", stream), operation, stream)
    else:
        client = sync_client(serve(wire))
        check_call(harness, lambda: run_sync(client, operation, "gpt-4o-mini", stream), operation, stream)


INVALID_USAGE = st.one_of(JUNK, st.fixed_dictionaries({
    "prompt_tokens": st.one_of(st.integers(-(2**40), -1), st.integers(MAX, 2**80), st.booleans(), st.none()),
    "completion_tokens": st.one_of(st.just("12"), st.floats(0.1, 0.9), st.none(), st.just(-1)),
}))


@hypothesis_settings(120)
@given(data=st.data(), place=st.sampled_from(["top", "choice", "both", "broken_top"]), stream=st.booleans())
def test_a_valid_usage_block_is_recorded_exactly_wherever_it_sits(harness: Harness, data: st.DataObject, place: str,
                                                                   stream: bool) -> None:
    """Computed from the generated body: top level wins over choices[0].usage; a broken top level does not hide
    a valid choices[0].usage."""
    usage, other = data.draw(sane_usage()), data.draw(sane_usage())
    top = {"top": usage, "choice": None, "both": usage, "broken_top": data.draw(INVALID_USAGE)}[place]
    in_choice = {"top": None, "choice": usage, "both": other, "broken_top": usage}[place]
    choice_body: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
    choice_body["delta" if stream else "message"] = {"role": "assistant", "content": "Reset it in settings."}
    if in_choice is not None:
        choice_body["usage"] = in_choice
    body = {"id": "c1", "object": "chat.completion.chunk" if stream else "chat.completion", "created": 1,
            "model": "gpt-4o-mini", "choices": [choice_body]}
    if top is not None:
        body["usage"] = top
    raw = f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n".encode() if stream else json.dumps(body).encode()
    wire = Wire(200, "text/event-stream" if stream else "application/json", (raw,))
    client = sync_client(serve(wire))
    bare, instrumented, span = harness.both(lambda: run_sync(client, "chat", "gpt-4o-mini", stream))
    check_same_for_caller(bare, instrumented)
    expected = usage_block(usage)
    assert expected is not None
    check_span(span, instrumented, expected, "chat", failed_at_call=False)
    details = {key: value for key, value in usage.items() if key.endswith("_details")}
    cached = first(*(d.get("cached_tokens") for d in details.values()))
    reasoning = first(*(d.get("reasoning_tokens") for d in details.values()))
    attributes = span.attributes
    assert attributes.get(names.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS) == cached
    assert attributes.get(names.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS) == reasoning


@hypothesis_settings(120)
@given(usage=USAGE.filter(lambda u: u is not None), contents=st.lists(CONTENT, min_size=1, max_size=3),
       cut=st.booleans())
@example(usage={}, contents=["Reset it in settings."], cut=False)  # found: a garbage block leaked its chunk
def test_the_injected_usage_chunk_stays_hidden_whatever_it_holds(harness_usage_chunk: Harness, usage: Any,
                                                                 contents: list[Any], cut: bool) -> None:
    """`stream_include_usage: true`: a server that honours `stream_options.include_usage` sends its usage chunk
    only to the instrumented call; the caller must not see it, even when the block in it is garbage."""
    def handler(request: httpx2.Request) -> httpx2.Response:
        options = json.loads(request.content).get("stream_options") or {}
        events = [{"id": "c", "object": "chat.completion.chunk", "model": "m",
                   "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
                  for content in contents]
        if options.get("include_usage"):
            events.append({"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [],
                           "usage": usage})
        raw = "".join(f"data: {json.dumps(event)}\n\n" for event in events)
        raw += "" if cut else "data: [DONE]\n\n"
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=raw.encode())

    client = sync_client(handler)
    bare, instrumented, span = harness_usage_chunk.both(lambda: run_sync(client, "chat", "gpt-4o-mini", True))
    check_same_for_caller(bare, instrumented)
    usage_chunk = construct_type(value={"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [],
                                        "usage": usage}, type_=ChatCompletionChunk)  # as the SDK parses it
    expected = response_usage(dump(usage_chunk))
    check_span(span, instrumented, expected, "chat", failed_at_call=False)
