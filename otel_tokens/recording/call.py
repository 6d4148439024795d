"""The neutral record of one LLM call: what every integration builds and the recorder consumes.

Integrations fill this and nothing else, so adding a client library means writing only its
wrapper (docs/design.md, "Data flow").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN

from otel_tokens.logs import internal_error

if TYPE_CHECKING:
    from otel_tokens.config.settings import Endpoint
    from otel_tokens.quota.budget.mode import Held
    from otel_tokens.recording.recorder import Recorder


@dataclass(slots=True)
class CallRecord:
    operation: str
    provider: str
    request_model: str
    response_model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    reasoning_output_tokens: int | None = None
    usage_source: str | None = None  # names.SOURCE_*; None when no count was obtained
    error_type: str | None = None
    time_to_first_chunk_s: float | None = None
    server_address: str | None = None
    server_port: int | None = None
    streaming: bool = False
    quota_action: str | None = None  # what the guard did: one of quota.vocabulary.ACTIONS
    original_model: str | None = None  # the model asked for, when the guard downgraded it
    original_server_address: str | None = None  # the server asked for, when a downgrade moved the call elsewhere
    original_server_port: int | None = None
    # a stream closed, abandoned or cut before its end with no usage block: what was read is counted,
    # but the server may have generated up to the request's limit (budget mode settles at its reservation)
    unfinished: bool = False
    # content, filled only when capture is enabled: semconv message lists, serialized by the recorder
    input_messages: list[dict[str, Any]] | None = None
    output_messages: list[dict[str, Any]] | None = None
    system_instructions: list[dict[str, Any]] | None = None


@dataclass(slots=True, frozen=True)
class UsageEstimate:
    """A call's worst case before it is sent, what a budget guard reserves: an upper bound of the
    prompt's tokens (never below what the server will count), the most output tokens asked for
    (None: no limit given), and how many completions."""

    input_tokens: int
    max_output_tokens: int | None = None
    choices: int = 1
    # the prompt's exact tokens for a model (its tokenizer and chat template), None where not known exactly:
    # computed only where the bound above would refuse or shorten the call
    exact_input: Callable[[str], int | None] | None = None


# The call of a library that drives another instrumented one (litellm over the openai SDK): calls begun
# while its library call (or a step of its stream) runs are its own internals, not calls of their own.
# The Call counts its open windows, so a task that copied the context inside one (a callback litellm
# schedules) is not covered once the window has closed.
_COVERING: ContextVar[Call | None] = ContextVar("otel_tokens_covering_call", default=None)


def covered() -> bool:
    call = _COVERING.get()
    return call is not None and call._covering > 0


class _Cover:
    """`with call.cover():` one covering window (no span made current, nothing finished)."""

    __slots__ = ("call", "token")

    def __init__(self, call: Call) -> None:
        self.call, self.token = call, None

    def __enter__(self) -> None:
        self.call._covering += 1
        self.token = _COVERING.set(self.call)

    def __exit__(self, *exc_info: Any) -> None:
        self.call._covering -= 1
        try:
            _COVERING.reset(self.token)  # type: ignore[arg-type]
        except ValueError:  # exited in another context than entered: leave that context's value alone
            pass


class Call:
    """One call in flight. `model` is what the library must call (the guard may have downgraded it), on
    `endpoint` when not None (a downgrade to another server);
    `record` is what the integration fills; everything else belongs to the recorder."""

    __slots__ = ("_cover", "_covering", "_estimate", "_finished", "_recorder", "_start", "_token", "attribution",
                 "covers_inner", "endpoint", "held", "model", "output_limit", "record", "span")

    def __init__(self, recorder: Recorder, record: CallRecord, span: trace.Span, attribution: Mapping[str, str],
                 estimate: Callable[[], UsageEstimate | None] | UsageEstimate | None = None,
                 finished: bool = False) -> None:
        self._recorder = recorder
        self.record = record
        self.model = record.request_model
        self.span = span
        self.attribution = attribution
        self._estimate = estimate
        self._start = time.perf_counter()
        self._finished = finished
        self._token: object = None
        self._covering = 0  # open covering windows
        self._cover: _Cover | None = None
        self.covers_inner = False  # calls begun inside this one's library call are not recorded again
        self.held: Held | None = None  # what budget mode reserved for this call
        self.output_limit: int | None = None  # `fit`: the output limit per choice the library must send
        self.endpoint: Endpoint | None = None  # a downgrade's server: the library sends the call there instead

    @property
    def live(self) -> bool:
        """False for an inert call (an internal failure, or a call inside a covering one): nothing to add."""
        return not self._finished

    def cover(self) -> _Cover:
        """A covering window around one step of this call's result (a stream's next chunk)."""
        return _Cover(self)

    def estimate(self) -> UsageEstimate | None:
        """The call's worst case (for a budget reservation), computed on first use only."""
        self._estimate = _worst_case(self._estimate)
        return self._estimate

    def mark_first_chunk(self) -> None:
        if self.record.time_to_first_chunk_s is None:
            self.record.time_to_first_chunk_s = time.perf_counter() - self._start

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    # `with call:` — the span is current inside; an exception leaving the block
    # finishes the call with it (a result that is consumed later finishes when it is consumed).
    def __enter__(self) -> Call:
        if self.span is not INVALID_SPAN:
            self._token = otel_context.attach(trace.set_span_in_context(self.span))
        if self.covers_inner and not self._finished:
            self._cover = _Cover(self)
            self._cover.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        token, self._token = self._token, None
        if token is not None:
            otel_context.detach(token)  # type: ignore[arg-type]
        cover, self._cover = self._cover, None
        if cover is not None:
            cover.__exit__()
        if exc is not None:
            self._recorder.finish(self, error=exc)


def _worst_case(estimate: Callable[[], UsageEstimate | None] | UsageEstimate | None) -> UsageEstimate | None:
    if not callable(estimate):
        return estimate
    try:
        return estimate()
    except Exception:
        internal_error("usage estimate")
        return None
