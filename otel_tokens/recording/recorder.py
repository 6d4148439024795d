"""The one recorder: owns the whole life of an instrumented call and turns it into span attributes
and metric points.

An integration calls `begin()` (attribution, the quota admission through `quota.enforcement`, the span),
runs the library call inside `with call:` and calls `finish()` once the result is consumed (usage, the
one cost rule, metrics, the budget settlement, the span's end); the recorder does everything else.
Modelled on opentelemetry-util-genai's start_inference / stop / fail.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.metrics import Meter
from opentelemetry.trace import INVALID_SPAN, SpanKind, Status, StatusCode, Tracer

from otel_tokens import names
from otel_tokens.attribution.context import current_attribution, with_principals
from otel_tokens.attribution.propagation import HeaderPropagation
from otel_tokens.config.settings import DEFAULT_SERIES_LIMIT, Settings
from otel_tokens.logs import internal_error
from otel_tokens.pricing import Cost, PriceBook
from otel_tokens.quota import vocabulary
from otel_tokens.quota.enforcement import Enforcement
from otel_tokens.recording.accounting import Accounting
from otel_tokens.recording.call import Call, CallRecord, UsageEstimate, covered
from otel_tokens.tokens.counting import TokenCounter

_EMPTY: Mapping[str, str] = {}
@dataclass(frozen=True)
class RecorderStats:
    models: tuple[tuple[str, str], ...]  # (provider, request model) called
    calls_by_source: Mapping[str, int]  # llm.usage.source ("none": no count) -> calls
    folded: Mapping[str, int]  # attribution dimension -> calls whose value was folded into __other__
    cardinality_limit: int  # distinct values per dimension before folding
    series_folded_calls: int  # calls folded to stay under the SDK reader's series limit
    unpriced: tuple[tuple[str, str], ...]  # (provider, model) called without a price


class Recorder:
    def __init__(self, tracer: Tracer, meter: Meter, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self.settings = settings
        self._tracer = tracer
        self.prices = PriceBook(settings)
        self.tokens = TokenCounter(settings.tokenizers, settings.allow_tokenizer_download)
        series_limit = settings.series_limit or DEFAULT_SERIES_LIMIT
        # unless set, the per-dimension cap follows the series limit: raising that one setting admits more
        # principals per process everywhere
        self.accounting = Accounting(meter, settings.metric_dimensions, settings.cardinality_limit or series_limit,
                                     series_limit, settings.currency, settings.app)
        self.enforcement = Enforcement(settings, self.prices, meter)
        self._propagation = HeaderPropagation(settings.propagate_hosts)

    # --- the call lifecycle ------------------------------------------------------------------------
    def begin(self, operation: str, provider: str, model: str, span_kind: SpanKind = SpanKind.CLIENT, *,
              server_address: str | None = None, server_port: int | None = None, streaming: bool = False,
              downgradable: bool = True, estimate: Callable[[], UsageEstimate | None] | None = None,
              covers_inner: bool = False) -> Call:
        """Start a call: who pays, the guard's decision, the span.

        Raises only the guard's refusal (a QuotaExceededError, already recorded as a failed call),
        which the caller is meant to see. `downgradable=False` for a model that cannot be swapped
        (in-process weights). `estimate` is called only by a guard that must reserve a worst case.
        `covers_inner=True` for a library that drives another instrumented one: calls begun inside
        its library call are inert (one span, one charge per call). On an internal failure the call
        is inert: the library call goes ahead, unrecorded."""
        if covered():
            return Call(self, CallRecord(operation, provider, model), INVALID_SPAN, _EMPTY, finished=True)
        admission = None
        try:
            claimed = current_attribution()
            attribution = with_principals(claimed)
            enforcement = self.enforcement
            request_model, decision, held, endpoint = model, None, None, None
            if not enforcement.idle:
                admission = enforcement.admit(provider, model, attribution, names.USER_ID in claimed, estimate,
                                              downgradable)
                request_model, decision, held, estimate, endpoint = (
                    admission.model, admission.decision, admission.held, admission.estimate,  # type: ignore[assignment]
                    admission.endpoint)
            asked = (server_address, server_port)
            if endpoint is not None:  # a downgrade to another server: the span and metrics name the one serving
                provider, server_address, server_port = endpoint.provider or provider, endpoint.host, endpoint.port
            call = self._start(operation, provider, request_model, span_kind, server_address, server_port,
                               streaming, attribution, estimate)
            call.held = held
            call.covers_inner = covers_inner
            if admission is not None:
                call.output_limit = admission.output_limit
            refusal = admission.refusal if admission is not None else None
            if decision is not None:
                call.record.quota_action = decision.action
                if request_model != model:
                    call.record.original_model = model
                if endpoint is not None:
                    call.endpoint = endpoint
                    call.record.original_server_address, call.record.original_server_port = asked
        except Exception:
            internal_error("call start")
            if admission is not None and admission.held is not None:
                self.enforcement.release(admission.held)
            return Call(self, CallRecord(operation, provider, model), INVALID_SPAN, _EMPTY, finished=True)
        if refusal is not None:
            self.finish(call, error=refusal)
            raise refusal
        return call

    def outgoing_headers(self, call: Call) -> dict[str, str]:
        """traceparent and baggage for the request this call sends ({} when propagation is off).
        Never raises: a broken propagator costs the trace link, never the call."""
        if not self.settings.propagate or call._finished:
            return {}
        try:
            return self._propagation.headers(call.span, call.attribution, call.record.server_address)
        except Exception:
            internal_error("propagation")
            return {}

    def finish(self, call: Call, error: BaseException | None = None) -> None:
        """Record the call once; later calls for the same call are ignored. Never raises."""
        if call._finished:
            return
        call._finished = True
        record = call.record
        cost = None
        try:
            if error is not None and record.error_type is None:
                record.error_type = type(error).__qualname__
            if record.input_tokens is not None or record.output_tokens is not None:
                cost = self._cost(record)
            # A refused call never ran: it may add to a request series that exists, never create one, so
            # a flood of refusals under made-up names costs the metrics backend nothing.
            self.accounting.add(record, call.elapsed(), call.attribution, cost,
                                refused=record.quota_action in vocabulary.REFUSALS)
        except Exception:
            internal_error("metrics")
        if call.held is not None:
            self.enforcement.settle(call.held, (record.input_tokens or 0) + (record.output_tokens or 0), cost,
                                    record.unfinished, sent=record.quota_action not in vocabulary.REFUSALS)
        span = call.span
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

    # --- inside the lifecycle --------------------------------------------------------------------
    def _start(self, operation: str, provider: str, request_model: str, span_kind: SpanKind,
               server_address: str | None, server_port: int | None, streaming: bool,
               attribution: Mapping[str, str], estimate: Callable[[], UsageEstimate | None] | UsageEstimate | None
               ) -> Call:
        record = CallRecord(operation=operation, provider=provider, request_model=request_model,
                            server_address=server_address, server_port=server_port, streaming=streaming)
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
        span = self._tracer.start_span(f"{operation} {request_model}", kind=span_kind, attributes=attributes)
        return Call(self, record, span, attribution, estimate)

    def _cost(self, record: CallRecord) -> Cost | None:
        return self.prices.cost_of(record.provider, record.response_model or record.request_model,
                                   record.input_tokens, record.output_tokens, record.cache_read_input_tokens,
                                   asked=record.request_model)

    def stats(self) -> RecorderStats:
        """What this process has recorded so far, for `doctor` and health checks."""
        accounting = self.accounting
        models, sources = accounting.calls_seen()
        return RecorderStats(models, sources, accounting.labels.folded(), accounting.labels.limit,
                             accounting.series_folded_calls, tuple(sorted(self.prices.unpriced)))

    def start(self) -> None:
        self.enforcement.start()

    def close(self) -> None:
        self.enforcement.close()
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
                       (names.LLM_QUOTA_ORIGINAL_MODEL, record.original_model),
                       (names.LLM_QUOTA_ORIGINAL_SERVER_ADDRESS, record.original_server_address),
                       (names.LLM_QUOTA_ORIGINAL_SERVER_PORT, record.original_server_port)):
        if value is not None:
            attributes[key] = value
    for key, messages in ((names.GEN_AI_INPUT_MESSAGES, record.input_messages),
                          (names.GEN_AI_OUTPUT_MESSAGES, record.output_messages),
                          (names.GEN_AI_SYSTEM_INSTRUCTIONS, record.system_instructions)):
        if messages is not None:  # only when content capture is on; JSON, as semconv says for spans
            attributes[key] = json.dumps(messages, ensure_ascii=False, default=str)
    return attributes
