"""Stream proxies for the openai SDK: behave exactly like the SDK's `Stream` / `AsyncStream`
(iteration, `with`, `close()`, `async for`, `async with`, `aclose()`, every attribute of the
original), note the first chunk, and record usage exactly once however the stream ends:
exhausted, `break` then `close()`, an exception mid-stream, or garbage collection.

Per chunk the proxy does a few attribute reads and one list append; everything else happens once,
when the stream ends.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Mapping
from typing import Any

import wrapt

from otel_tokens import names
from otel_tokens.integrations.openai_content import stream_output
from otel_tokens.integrations.openai_usage import Ending, Usage, apply_usage, count_locally, find_usage, get
from otel_tokens.logs import internal_error
from otel_tokens.recording.call import Call
from otel_tokens.recording.recorder import Recorder

_RESPONSE_DONE = ("response.completed", "response.incomplete", "response.failed")


class StreamState:
    """What a stream has shown so far; holds no reference to the proxy, so GC can finalize it."""

    __slots__ = (
        "__weakref__",
        "call",
        "counter",
        "covered",
        "done",
        "ended",
        "finalizer",
        "hide_usage_chunk",
        "kwargs",
        "other_parts",
        "parts",
        "reasons",
        "recorder",
        "response_model",
        "responses_api",
        "stops",
        "texts",
        "tool_calls",
        "usage",
    )

    def __init__(self, recorder: Recorder, call: Call, kwargs: Mapping[str, Any], hide_usage_chunk: bool) -> None:
        self.recorder, self.counter, self.call, self.kwargs = recorder, recorder.tokens, call, kwargs
        self.hide_usage_chunk = hide_usage_chunk
        self.covered = call.covers_inner  # a library that reads its stream through another instrumented one
        self.responses_api = "input" in kwargs and call.record.operation == names.OPERATION_CHAT
        self.parts: list[str] = []  # choice 0's text (and every choice's when the server sends no index)
        self.other_parts: dict[int, list[str]] | None = None  # n > 1: each other choice's, apart (joined
        # pieces of interleaved choices would re-tokenize to other tokens)
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.done = False
        self.ended = False  # the server's stream reached its end (not closed, abandoned or cut before it)
        self.stops = 0  # choices that ended with finish_reason "stop"
        self.tool_calls = False
        self.finalizer: weakref.finalize | None = None
        # content capture only (else None, nothing allocated): text deltas and finish reasons per choice index
        capture = recorder.settings.capture_content
        self.texts: dict[int, list[str]] | None = {} if capture else None
        self.reasons: dict[int, str] | None = {} if capture else None

    def on_item(self, item: Any) -> bool:
        """Take note of one chunk; True when it is the injected usage-only chunk to hide."""
        call = self.call
        if call.record.time_to_first_chunk_s is None:
            call.mark_first_chunk()
        if self.responses_api:
            kind = getattr(item, "type", None)
            if kind == "response.output_text.delta":
                delta = getattr(item, "delta", None)
                if isinstance(delta, str):
                    self.parts.append(delta)
                    if self.texts is not None:
                        self.texts.setdefault(0, []).append(delta)
            elif kind in _RESPONSE_DONE:
                response = getattr(item, "response", None)
                self.usage = find_usage(response) or self.usage
                model = get(response, "model")
                if isinstance(model, str):
                    self.response_model = model
            return False
        if self.response_model is None:
            model = getattr(item, "model", None)
            if isinstance(model, str) and model:
                self.response_model = model
        choices = getattr(item, "choices", None)
        if not isinstance(choices, list):  # a broken server's `"choices": 5` / `{...}` is no list of choices
            choices = None
        if getattr(item, "usage", None) is not None or (
                choices and (extra := getattr(choices[0], "__pydantic_extra__", None)) and "usage" in extra):
            usage = find_usage(item)
            if usage is not None:
                self.usage = usage
            if self.hide_usage_chunk and not choices:  # the chunk we asked for, even when its block is garbage
                return True
        if choices:
            for choice in choices:
                delta = getattr(choice, "delta", None)
                text = getattr(delta, "content", None) if delta is not None else getattr(choice, "text", None)
                index = getattr(choice, "index", 0)
                index = index if type(index) is int else 0
                parts = self._parts_of(index) if index else self.parts
                if text and isinstance(text, str):
                    parts.append(text)
                reason = getattr(choice, "finish_reason", None)
                if self.texts is not None:
                    self._capture(index, text, reason)
                if reason is not None:
                    self.stops += reason == "stop"
                    self.tool_calls = self.tool_calls or reason in ("tool_calls", "function_call")
                calls = getattr(delta, "tool_calls", None) if delta is not None else None
                if isinstance(calls, list):  # not `true` or `5` from a broken server
                    self.tool_calls = True
                    for call in calls:
                        function = getattr(call, "function", None)
                        for piece in (getattr(function, "name", None), getattr(function, "arguments", None)):
                            if isinstance(piece, str):
                                parts.append(piece)
        return False

    def _parts_of(self, index: int) -> list[str]:
        if self.other_parts is None:
            self.other_parts = {}
        return self.other_parts.setdefault(index, [])

    def _capture(self, index: int, text: Any, reason: Any) -> None:
        if text and isinstance(text, str):
            self.texts.setdefault(index, []).append(text)  # type: ignore[union-attr]
        if isinstance(reason, str):
            self.reasons[index] = reason  # type: ignore[index]

    def finish(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        if self.finalizer is not None:
            self.finalizer.detach()
        record = self.call.record
        try:
            if self.response_model:
                record.response_model = self.response_model
            if self.usage is not None:
                apply_usage(record, self.usage)
            else:
                texts = ["".join(self.parts), *("".join(p) for p in (self.other_parts or {}).values())]
                count_locally(record, self.counter, self.kwargs, texts,
                              Ending(self.stops, self.tool_calls))
                # closed, abandoned or cut before its end: the server may have generated more than was read,
                # so what was read is an estimate of the call's output, never an exact count
                record.unfinished = not self.ended
                if record.unfinished and record.usage_source == names.SOURCE_COUNTED:
                    record.usage_source = names.SOURCE_ESTIMATED
        except Exception:
            internal_error("openai stream usage")
        if self.texts is not None and self.reasons is not None:
            try:
                record.output_messages = stream_output(self.texts, self.reasons)
            except Exception:
                internal_error("openai stream content")
        self.parts, self.other_parts = [], None
        self.recorder.finish(self.call, error=error)


def _closed(result: Any, state: StreamState) -> Any:
    """`close()`'s result, the stream recorded once it is closed (now, or when an async close is awaited)."""
    if inspect.isawaitable(result):
        async def awaited() -> Any:
            try:
                return await result
            finally:
                state.finish()
        return awaited()
    state.finish()
    return result


class _Closing:
    """`close()` as the wrapped stream has it (the SDK's async one is a coroutine, litellm's is not),
    the stream recorded once closed."""

    __wrapped__: Any
    _self_state: StreamState

    def close(self) -> Any:
        try:
            result = self.__wrapped__.close()
        except BaseException:
            self._self_state.finish()
            raise
        return _closed(result, self._self_state)


class StreamProxy(_Closing, wrapt.ObjectProxy):  # type: ignore[misc]
    def __init__(self, stream: Any, state: StreamState) -> None:
        super().__init__(stream)
        self._self_state = state
        state.finalizer = weakref.finalize(self, state.finish)

    def __iter__(self) -> StreamProxy:
        return self

    def __next__(self) -> Any:
        state = self._self_state
        while True:
            try:
                if state.covered:
                    with state.call.cover():
                        item = self.__wrapped__.__next__()
                else:
                    item = self.__wrapped__.__next__()
            except StopIteration:
                state.ended = True
                state.finish()
                raise
            except BaseException as exc:
                state.finish(exc)
                raise
            try:
                hidden = state.on_item(item)
            except Exception:
                internal_error("openai stream chunk")
                hidden = False
            if not hidden:
                return item

    def __enter__(self) -> StreamProxy:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(*exc_info)
        finally:
            self._self_state.finish()


class _AsyncIteration:
    """`async for`, `aclose()`, `async with` of a proxied stream (the wrapped object has them)."""

    __wrapped__: Any
    _self_state: StreamState

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        state = self._self_state
        while True:
            try:
                if state.covered:
                    with state.call.cover():
                        item = await self.__wrapped__.__anext__()
                else:
                    item = await self.__wrapped__.__anext__()
            except StopAsyncIteration:
                state.ended = True
                state.finish()
                raise
            except BaseException as exc:
                state.finish(exc)
                raise
            try:
                hidden = state.on_item(item)
            except Exception:
                internal_error("openai stream chunk")
                hidden = False
            if not hidden:
                return item

    async def aclose(self) -> Any:
        try:
            return await self.__wrapped__.aclose()
        finally:
            self._self_state.finish()

    async def __aenter__(self) -> Any:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(*exc_info)
        finally:
            self._self_state.finish()


class AsyncStreamProxy(_Closing, _AsyncIteration, wrapt.ObjectProxy):  # type: ignore[misc]
    def __init__(self, stream: Any, state: StreamState) -> None:
        super().__init__(stream)
        self._self_state = state
        state.finalizer = weakref.finalize(self, state.finish)



class DualStreamProxy(_AsyncIteration, StreamProxy):
    """A stream the library lets its caller read both ways (litellm's CustomStreamWrapper)."""
