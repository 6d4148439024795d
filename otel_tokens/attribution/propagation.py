"""Outgoing trace context and attribution for an instrumented HTTP call: traceparent + baggage
(user.id, department, session.id), so an instrumented model server joins the trace and charges
the same principal. Library-neutral: an integration only decides where the headers go.

Only our three keys go out, with the app's values (inbound baggage entries, forged or foreign, are
never forwarded by us), and only to internal hosts (docs/design.md): loopback, private and link-local
addresses and `localhost`, or the operator's `propagate_hosts` globs instead (a service name such as
`vllm` or `*.svc.cluster.local` is named there: a name says nothing of where it resolves). A
third-party API gets the traceparent only."""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context

from otel_tokens import names


def internal_host(host: str | None, globs: Sequence[str] = ()) -> bool:
    """Whether attribution may go to `host`: the operator's globs, else the built-in internal set."""
    if not host:
        return False
    name = host.strip("[]").rstrip(".").lower()
    if globs:
        return any(fnmatch.fnmatchcase(name, glob.lower()) for glob in globs)
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name == "localhost"
    return address.is_loopback or address.is_private or address.is_link_local


def _is_w3c_default(propagator: Any) -> bool:
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    inner = getattr(propagator, "_propagators", None)
    kinds = sorted(type(p).__name__ for p in inner) if isinstance(inner, list) else []
    return kinds == sorted([TraceContextTextMapPropagator.__name__, W3CBaggagePropagator.__name__])


class HeaderPropagation:
    """The global propagator's headers; for the W3C default, written directly (~10 us cheaper), the
    baggage header cached since it is the same for every call of a principal."""

    _CACHE_LIMIT = 10_000

    def __init__(self, hosts: Sequence[str] = ()) -> None:
        self._seen: Any = None  # the global propagator last looked at
        self._fast = False  # whether it is the W3C default
        self._baggage: dict[tuple[Any, ...], str] = {}
        self._hosts = tuple(hosts)
        self._internal: dict[str | None, bool] = {}

    def headers(self, span: trace.Span, attribution: Mapping[str, str], host: str | None = None
                ) -> dict[str, str]:
        internal = self._internal.get(host)
        if internal is None:
            if len(self._internal) > self._CACHE_LIMIT:
                self._internal.clear()
            internal = self._internal[host] = internal_host(host, self._hosts)
        if not internal:
            attribution = {}
        propagator = propagate.get_global_textmap()
        if propagator is not self._seen:
            self._fast = _is_w3c_default(propagator)
            self._seen = propagator
        if self._fast:
            return self.w3c_headers(span, attribution)
        ctx = trace.set_span_in_context(span, otel_context.Context())  # none of the inbound baggage
        for key in names.BAGGAGE_KEYS:
            value = attribution.get(key)
            if value is not None and value != names.UNATTRIBUTED:  # our placeholder is no one's id
                ctx = baggage.set_baggage(key, value, ctx)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=ctx)
        return carrier

    def w3c_headers(self, span: trace.Span, attribution: Mapping[str, str]) -> dict[str, str]:
        """traceparent + baggage exactly as the default W3C propagators would write them."""
        headers = {}
        span_context = span.get_span_context()
        if span_context.is_valid:
            headers["traceparent"] = (f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
                                      f"{int(span_context.trace_flags):02x}")
            if span_context.trace_state:
                headers["tracestate"] = span_context.trace_state.to_header()
        key = tuple(attribution.get(k) for k in names.BAGGAGE_KEYS)
        encoded = self._baggage.get(key)
        if encoded is None:
            encoded = self._encode_baggage(attribution)
            if len(self._baggage) > self._CACHE_LIMIT:
                self._baggage.clear()
            self._baggage[key] = encoded
        if encoded:
            headers["baggage"] = encoded
        return headers

    @staticmethod
    def _encode_baggage(attribution: Mapping[str, str]) -> str:
        from opentelemetry.baggage.propagation import W3CBaggagePropagator

        ctx = otel_context.Context()
        for name in names.BAGGAGE_KEYS:
            value = attribution.get(name)
            if value is not None and value != names.UNATTRIBUTED:
                ctx = baggage.set_baggage(name, value, ctx)
        carrier: dict[str, str] = {}
        W3CBaggagePropagator().inject(carrier, context=ctx)
        return carrier.get("baggage", "")
