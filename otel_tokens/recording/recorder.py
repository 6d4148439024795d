"""The one recorder: owns the whole life of an instrumented call and turns it into span attributes
and metric points.

An integration calls `begin()` (attribution, the guard's decision, the span), runs the library call
inside `with recorder.active(call):` and calls `finish()` once the result is consumed; the recorder
does everything else. Modelled on opentelemetry-util-genai's start_inference / stop / fail.
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
from otel_tokens.quota import vocabulary as quota_scopes
from otel_tokens.quota.alert.mode import Guard
from otel_tokens.quota.budget.mode import BudgetGuard, Held
from otel_tokens.quota.decision import Decision
from otel_tokens.recording.accounting import Accounting
from otel_tokens.recording.call import Call, CallRecord, UsageEstimate, _worst_case, covered
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
        self.accounting = Accounting(meter, settings.metric_dimensions, settings.cardinality_limit,
                                     settings.series_limit or DEFAULT_SERIES_LIMIT, settings.currency)
        self.guard = Guard(settings.guard)  # alert mode
        self.budget = BudgetGuard(settings.guard, self.prices) if settings.guard.budget else None
        self._propagation = HeaderPropagation(settings.propagate_hosts)
        self._reject_unattributed = settings.unattributed == quota_scopes.REJECT
        self._decisions = meter.create_counter(
            names.METRIC_GUARD_DECISIONS, unit=names.UNIT_DECISION,
            description="Quota guard decisions other than allow: reject, downgrade, fail_open, fail_closed.")

    # --- the call lifecycle ------------------------------------------------------------------------
    def begin(self, operation: str, provider: str, model: str, kind: SpanKind = SpanKind.CLIENT, *,
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
        refusal, held = None, None
        try:
            claimed = current_attribution()
            attribution = with_principals(claimed)
            decision = None
            if self._reject_unattributed and names.USER_ID not in claimed:
                decision = Decision(quota_scopes.REJECT, quota_scopes.UNATTRIBUTED_CALLS)
                self._count(decision)
            elif self.guard.settings.enabled:
                decision = self._decide(model if downgradable else None, attribution)
            request_model = model
            if decision is not None and decision.model is not None:
                request_model = decision.model
            if self.budget is not None and (decision is None or decision.action not in quota_scopes.REFUSALS):
                estimate = _worst_case(estimate)  # once: the call keeps the value, not the function
                decision, held = self._reserve(provider, request_model, attribution, estimate, downgradable,
                                               decision)
                if decision is not None and decision.model is not None:
                    request_model = decision.model
            if decision is not None and decision.action in quota_scopes.REFUSALS:
                refusal = decision.error()
            call = self._start(operation, provider, request_model, kind, server_address, server_port, streaming,
                               attribution, estimate)
            call.held = held
            call.covers_inner = covers_inner
            if decision is not None:
                call.record.quota_action = decision.action
                if request_model != model:
                    call.record.original_model = model
        except Exception:
            internal_error("call start")
            if held is not None and self.budget is not None:
                self.budget.settle(held, 0, None)
            return Call(self, CallRecord(operation, provider, model), INVALID_SPAN, _EMPTY, finished=True)
        if refusal is not None:
            self.finish(call, error=refusal)
            raise refusal
        return call

    def active(self, call: Call) -> Call:
        """`with recorder.active(call):` around the library call: the span is current inside (children
        and propagation see it); an exception leaving the block finishes the call with it."""
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
                                refused=record.quota_action in quota_scopes.REFUSALS)
        except Exception:
            internal_error("metrics")
        if call.held is not None and self.budget is not None:
            try:
                self.budget.settle(call.held, (record.input_tokens or 0) + (record.output_tokens or 0),
                                   cost.total if cost is not None else None, at_least_reserved=record.unfinished)
            except Exception:
                internal_error("budget settle")
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
    def _decide(self, model: str | None, attribution: Mapping[str, str]) -> Decision | None:
        """Alert mode's decision (None: allowed); counted when not None."""
        decision = self.guard.decide(model, attribution)
        self._count(decision)
        return decision

    def _reserve(self, provider: str, model: str, attribution: Mapping[str, str], worst: UsageEstimate | None,
                 downgradable: bool, earlier: Decision | None) -> tuple[Decision | None, Held | None]:
        """Budget mode: the call's worst case reserved (or its refusal); counted when not None."""
        assert self.budget is not None
        decision, held = self.budget.reserve(provider, model, attribution, worst, downgradable)
        self._count(decision)
        return (decision or earlier), held

    def _count(self, decision: Decision | None) -> None:
        if decision is not None:
            try:
                self._decisions.add(1, {names.GUARD_DECISION: decision.action,
                                        names.GUARD_QUOTA: decision.kind or "none"})
            except Exception:
                internal_error("guard decision counter")

    def _start(self, operation: str, provider: str, request_model: str, kind: SpanKind,
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
        span = self._tracer.start_span(f"{operation} {request_model}", kind=kind, attributes=attributes)
        return Call(self, record, span, attribution, estimate)

    def _cost(self, record: CallRecord) -> Cost | None:
        model = record.response_model or record.request_model
        prices = self.prices
        if record.response_model and prices.lookup(record.provider, model) is None:
            model = record.request_model  # a dated snapshot may lack a price its alias has
        return prices.cost(record.provider, model, record.input_tokens, record.output_tokens,
                           record.cache_read_input_tokens)

    def stats(self) -> RecorderStats:
        """What this process has recorded so far, for `doctor` and health checks."""
        accounting = self.accounting
        models, sources = accounting.calls_seen()
        return RecorderStats(models, sources, accounting.labels.folded(), accounting.labels.limit,
                             accounting.series_folded_calls, tuple(sorted(self.prices.unpriced)))

    def start(self) -> None:
        """The guards' background work: alert mode's polling, budget mode's settlements and reloads."""
        self.guard.start()
        if self.budget is not None:
            self.budget.start()

    def close(self) -> None:
        self.guard.stop()
        if self.budget is not None:
            self.budget.close()
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
