"""Where a usage block sits in a hostile response (top level, `choices[0]`, both, a broken top level): a valid
block is recorded exactly wherever it is; and the usage chunk we ask for stays hidden from the caller whatever
it holds."""

from __future__ import annotations

import json
from typing import Any

import httpx2
from hypothesis import example, given
from hypothesis import strategies as st
from openai._models import construct_type
from openai.types.chat import ChatCompletionChunk

from otel_tokens import names
from tests.support.hostile_harness import (
    Harness,
    check_same_for_caller,
    check_span,
    dump,
    first,
    response_usage,
    run_sync,
    serve,
    sync_client,
    usage_block,
)
from tests.support.hostile_wire import CONTENT, INVALID_USAGE, USAGE, Wire, hypothesis_settings, sane_usage


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
