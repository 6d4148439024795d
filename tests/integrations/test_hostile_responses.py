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

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.hostile_harness import Harness, async_client, check_call, run_async, run_sync, serve, sync_client
from tests.support.hostile_wire import REQUEST_MODELS, Wire, body_wire, hypothesis_settings, sse_wire

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


