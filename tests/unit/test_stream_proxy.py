"""The openai stream proxies on their own, over a stand-in for the SDK's Stream: the caller sees every chunk
and attribute of the original, and usage is recorded exactly once however the stream ends."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from openai.types.chat import ChatCompletionChunk

from otel_tokens import names
from otel_tokens.config.settings import Settings
from otel_tokens.integrations.openai_stream import AsyncStreamProxy, StreamProxy, StreamState
from otel_tokens.recording.recorder import Recorder
from tests.support.telemetry import make_telemetry

KWARGS = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def chunk(text: str | None = None, usage: dict[str, int] | None = None) -> ChatCompletionChunk:
    choices = [] if text is None else [{"index": 0, "delta": {"content": text}, "finish_reason": None}]
    return ChatCompletionChunk.model_validate({"id": "c", "object": "chat.completion.chunk", "created": 0,
                                               "model": "gpt-4-0613", "choices": choices, "usage": usage})


CHUNKS = [chunk("Hel"), chunk("lo"), chunk(usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})]


class FakeStream:
    """What the proxy relies on of openai.Stream: iteration, close(), `with`, and its own attributes."""

    def __init__(self, items: list[Any], fail_after: int | None = None) -> None:
        self._items, self._fail_after, self.closed, self.response = iter(items), fail_after, False, "http-response"
        self._seen = 0

    def __next__(self) -> Any:
        if self._fail_after is not None and self._seen == self._fail_after:
            raise ConnectionResetError("peer went away")
        self._seen += 1
        return next(self._items)

    def __iter__(self) -> FakeStream:
        return self

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FakeAsyncStream(FakeStream):
    async def __anext__(self) -> Any:
        try:
            return self.__next__()
        except StopIteration:
            raise StopAsyncIteration from None

    async def close(self) -> None:  # type: ignore[override]
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True

    async def __aenter__(self) -> FakeAsyncStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


@pytest.fixture
def proxy():
    tel, tracer_provider, meter_provider = make_telemetry()
    recorder = Recorder(tracer_provider.get_tracer("t"), meter_provider.get_meter("t"), Settings(builtin_prices=False))

    def make(stream: Any, hide: bool = False, proxy_type: type = StreamProxy) -> Any:
        call = recorder.begin(names.OPERATION_CHAT, "openai", "gpt-4", streaming=True)
        return proxy_type(stream, StreamState(recorder, call, KWARGS, hide))

    yield make, tel
    recorder.close()


def _usage(tel) -> tuple[int, int, str]:
    span = tel.span()  # exactly one span: recorded once
    return (span.attributes[names.GEN_AI_USAGE_INPUT_TOKENS], span.attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS],
            span.attributes[names.LLM_USAGE_SOURCE])


def test_exhausted_stream_gives_every_chunk_and_the_reported_usage_once(proxy):
    make, tel = proxy
    stream = make(FakeStream(list(CHUNKS)))
    assert list(stream) == CHUNKS
    stream.close()
    assert _usage(tel) == (9, 2, "reported")
    assert tel.span().attributes[names.GEN_AI_RESPONSE_MODEL] == "gpt-4-0613"
    assert tel.span().attributes[names.GEN_AI_OPERATION_NAME] == "chat"
    assert stream.response == "http-response" and stream.closed  # the original's attributes, through the proxy


def test_break_then_close_records_once_with_what_was_seen(proxy):
    make, tel = proxy
    with make(FakeStream(list(CHUNKS))) as stream:
        for item in stream:
            assert item is CHUNKS[0]
            break
    input_tokens, output_tokens, source = _usage(tel)
    assert source in (names.SOURCE_COUNTED, names.SOURCE_ESTIMATED) and output_tokens >= 1 and input_tokens > 0


def test_an_error_mid_stream_passes_through_and_is_recorded(proxy):
    make, tel = proxy
    stream = make(FakeStream(list(CHUNKS), fail_after=1))
    with pytest.raises(ConnectionResetError, match="peer went away"):
        list(stream)
    assert tel.span().attributes[names.ERROR_TYPE] == "ConnectionResetError"


def test_a_stream_dropped_unread_is_recorded_when_collected(proxy):
    make, tel = proxy
    stream = make(FakeStream(list(CHUNKS)))
    next(stream)
    del stream
    gc.collect()
    assert len(tel.spans()) == 1


def test_the_usage_chunk_we_asked_for_is_hidden(proxy):
    make, tel = proxy
    assert list(make(FakeStream(list(CHUNKS)), hide=True)) == CHUNKS[:2]
    assert _usage(tel) == (9, 2, "reported")


def test_async_stream_every_way_it_can_end(proxy):
    make, tel = proxy

    async def run() -> None:
        stream = make(FakeAsyncStream(list(CHUNKS)), proxy_type=AsyncStreamProxy)
        assert [item async for item in stream] == CHUNKS
        async with make(FakeAsyncStream(list(CHUNKS)), proxy_type=AsyncStreamProxy) as early:
            async for _ in early:
                break
        broken = make(FakeAsyncStream(list(CHUNKS), fail_after=0), proxy_type=AsyncStreamProxy)
        with pytest.raises(ConnectionResetError):
            await broken.__anext__()
        await broken.aclose()

    asyncio.run(run())
    spans = tel.spans()
    assert len(spans) == 3
    assert spans[0].attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS] == 2
    assert spans[2].attributes[names.ERROR_TYPE] == "ConnectionResetError"
