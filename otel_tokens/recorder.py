"""The one recorder: turns a CallRecord into span attributes and metric points.

Integrations call `start()` before the library call and `finish()` after it; attribution is
taken at start (who asked, not who happened to be current when a stream ended).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import Meter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from . import names
from .accounting import Accounting
from .attribution import current_attribution
from .config import DEFAULT_SERIES_LIMIT, Settings
from .guard import Decision, Guard, QuotaExceededError, QuotaStateUnavailableError
from .pricing import Cost, PriceBook
from .record import CallRecord
from .safety import internal_error
from .token_counting import TokenCounter


class CallHandle:
    """One call in flight: its record, span and start time."""

    __slots__ = ("_finished", "_start", "attribution", "record", "span")

    def __init__(self, record: CallRecord, span: trace.Span, attribution: Mapping[str, str]) -> None:
        self.record = record
        self.span = span
        self.attribution = attribution
        self._start = time.perf_counter()
        self._finished = False

    def activate(self) -> object:
        """Make the span current (so children and propagation see it); pass the result to deactivate."""
        return otel_context.attach(trace.set_span_in_context(self.span))

    @staticmethod
    def deactivate(token: object) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]

    def mark_first_chunk(self) -> None:
        if self.record.time_to_first_chunk_s is None:
            self.record.time_to_first_chunk_s = time.perf_counter() - self._start

    def elapsed(self) -> float:
        return time.perf_counter() - self._start


class Recorder:
    def __init__(self, tracer: Tracer, meter: Meter, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self.settings = settings
        self._tracer = tracer
        self.prices = PriceBook(settings)
        self.tokens = TokenCounter(settings.tokenizers, settings.allow_tokenizer_download)
        self.accounting = Accounting(meter, settings.metric_dimensions, settings.cardinality_limit,
                                     settings.series_limit or DEFAULT_SERIES_LIMIT, settings.currency)
        self.guard = Guard(settings.guard)
        self._decisions = meter.create_counter(
            names.METRIC_GUARD_DECISIONS, unit=names.UNIT_DECISION,
            description="Quota guard decisions other than allow: reject, downgrade, fail_open, fail_closed.")
        self.sources_seen: dict[str, int] = {}  # llm.usage.source -> calls, for doctor
        self.models_seen: set[tuple[str, str]] = set()

    def decide(self, model: str | None, attribution: Mapping[str, str]) -> Decision | None:
        """The guard's decision for a call about to start (None: allowed); counted when not None."""
        decision = self.guard.decide(model, attribution)
        if decision is not None:
            try:
                self._decisions.add(1, {names.GUARD_DECISION: decision.action,
                                        names.GUARD_QUOTA: decision.kind or "none"})
            except Exception:
                internal_error("guard decision counter")
        return decision

    def refuse(self, decision: Decision, operation: str, provider: str, request_model: str,
               kind: SpanKind, attribution: Mapping[str, str]) -> QuotaExceededError:
        """Record a refused call (a span with the decision, a failed request) and return the error to raise."""
        error = (QuotaStateUnavailableError(self.guard.settings.source) if decision.action == "fail_closed"
                 else decision.error())
        handle = self.start(operation, provider, request_model, kind, attribution=attribution)
        handle.record.quota_action = decision.action
        self.finish(handle, error=error)
        return error

    def start(self, operation: str, provider: str, request_model: str, kind: SpanKind = SpanKind.CLIENT,
              server_address: str | None = None, server_port: int | None = None,
              streaming: bool = False, attribution: Mapping[str, str] | None = None) -> CallHandle:
        record = CallRecord(operation=operation, provider=provider, request_model=request_model,
                            server_address=server_address, server_port=server_port, streaming=streaming)
        if attribution is None:
            attribution = current_attribution()
        attributes: dict[str, Any] = {
            names.GEN_AI_OPERATION_NAME: operation,
            names.GEN_AI_PROVIDER_NAME: provider,
            names.GEN_AI_REQUEST_MODEL: request_model,
        }
        if server_address is not None:
            attributes[names.SERVER_ADDRESS] = server_address
        if server_port is not None:
            attributes[names.SERVER_PORT] = server_port
        if attribution:
            attributes.update(attribution)
        span = self._tracer.start_span(f"{operation} {request_model}", kind=kind, attributes=attributes)
        return CallHandle(record, span, attribution)

    def finish(self, handle: CallHandle, error: BaseException | None = None) -> None:
        """Record the call once; later calls for the same handle are ignored. Never raises."""
        if handle._finished:
            return
        handle._finished = True
        record = handle.record
        cost = None
        try:
            if error is not None and record.error_type is None:
                record.error_type = type(error).__qualname__
            if record.input_tokens is not None or record.output_tokens is not None:
                cost = self._cost(record)
            self.accounting.add(record, handle.elapsed(), handle.attribution, cost)
        except Exception:
            internal_error("metrics")
        span = handle.span
        try:
            if span.is_recording():
                attributes = _span_attributes(record)
                if cost is not None:
                    attributes[names.LLM_COST] = cost.total
                    attributes[names.LLM_COST_CURRENCY] = cost.currency
                span.set_attributes(attributes)
                if record.error_type is not None:
                    # The type only: exception messages can echo prompt text.
                    span.set_status(Status(StatusCode.ERROR, record.error_type))
            span.end()
        except Exception:
            internal_error("span")

    def _cost(self, record: CallRecord) -> Cost | None:
        model = record.response_model or record.request_model
        key = (record.provider, model)
        if key not in self.models_seen:
            self.models_seen.add(key)
        source = record.usage_source or "none"
        self.sources_seen[source] = self.sources_seen.get(source, 0) + 1
        prices = self.prices
        if record.response_model and prices.lookup(record.provider, model) is None:
            model = record.request_model  # a dated snapshot may lack a price its alias has
        return prices.cost(record.provider, model, record.input_tokens, record.output_tokens,
                           record.cache_read_input_tokens)

    def close(self) -> None:
        self.guard.stop()
        self.accounting.close()


def _span_attributes(record: CallRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for key, value in ((names.GEN_AI_RESPONSE_MODEL, record.response_model),
                       (names.GEN_AI_USAGE_INPUT_TOKENS, record.input_tokens),
                       (names.GEN_AI_USAGE_OUTPUT_TOKENS, record.output_tokens),
                       (names.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, record.cache_read_input_tokens),
                       (names.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, record.reasoning_output_tokens),
                       (names.LLM_USAGE_SOURCE, record.usage_source),
                       (names.ERROR_TYPE, record.error_type),
                       (names.LLM_QUOTA_ACTION, record.quota_action),
                       (names.LLM_QUOTA_ORIGINAL_MODEL, record.original_model)):
        if value is not None:
            attributes[key] = value
    for key, messages in ((names.GEN_AI_INPUT_MESSAGES, record.input_messages),
                          (names.GEN_AI_OUTPUT_MESSAGES, record.output_messages),
                          (names.GEN_AI_SYSTEM_INSTRUCTIONS, record.system_instructions)):
        if messages is not None:  # only when content capture is on; JSON, as semconv says for spans
            attributes[key] = json.dumps(messages, ensure_ascii=False, default=str)
    return attributes
