"""Hostile OpenAI-compatible wire data for property tests: hypothesis strategies of response bodies and SSE
byte streams (junk values, wrong types, huge or negative counts, broken UTF-8, truncation), served in-process
through httpx2.MockTransport."""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

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

INVALID_USAGE = st.one_of(JUNK, st.fixed_dictionaries({
    "prompt_tokens": st.one_of(st.integers(-(2**40), -1), st.integers(MAX, 2**80), st.booleans(), st.none()),
    "completion_tokens": st.one_of(st.just("12"), st.floats(0.1, 0.9), st.none(), st.just(-1)),
}))
