"""Running one hostile call bare and instrumented, and the checks that the caller saw the same and the span
recorded the right usage (or none)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx2
import openai
import pydantic
from hypothesis import currently_in_test_context, event
from opentelemetry.instrumentation.utils import suppress_instrumentation

from otel_tokens import TokenUsageInstrumentor, names
from otel_tokens import logs as safety
from otel_tokens.config.settings import Settings
from tests.support.hostile_wire import BASE_URL, MAX, MESSAGES, Wire
from tests.support.telemetry import LogRecords, Telemetry, make_telemetry

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


def instrumented_harness(config: Settings) -> Iterator[Harness]:
    """The package instrumented with `config` on in-memory telemetry, its log records collected."""
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
