"""The metric side of the recorder, aggregated in process so the call path stays cheap.

The OTel SDK costs ~10-15 us per synchronous `add()`/`record()` here and a call touches up to
eight instruments. Instead, the accounting counters are dicts keyed by the label tuple, exported
by observable counters at collection time (cumulative totals, so any temporality is right), and
the semconv histogram points are queued and recorded into the real histograms off the call
path. A collection meets the call path at one point, `collect()`: the queued histogram points go into
the SDK histograms (the SDK runs observable callbacks before it reads storage, so they land in that
same collection) and the counters are read once, so the three counters of one collection agree. A
drain thread records the points early when the queue grows. What the call pays is one lock, two dict
updates and one list append.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from otel_tokens import names
from otel_tokens.config.settings import DEFAULT_SERIES_LIMIT
from otel_tokens.logs import internal_error
from otel_tokens.pricing import Cost
from otel_tokens.recording.call import CallRecord
from otel_tokens.recording.cardinality import DimensionValueCap, SeriesCap
from otel_tokens.recording.principals import PrincipalUsage
from otel_tokens.text import valid_text

_DRAIN_THRESHOLD = 512  # queued calls before the drain thread is woken

# Label tuple of the usage dict: these, then the attribution dimensions.
_USAGE_KEYS = (names.GEN_AI_OPERATION_NAME, names.GEN_AI_PROVIDER_NAME, names.GEN_AI_REQUEST_MODEL,
               names.LLM_USAGE_SOURCE)
_SEMCONV_KEYS = (names.GEN_AI_OPERATION_NAME, names.GEN_AI_PROVIDER_NAME, names.GEN_AI_REQUEST_MODEL,
                 names.GEN_AI_RESPONSE_MODEL, names.SERVER_ADDRESS, names.SERVER_PORT)
# Per usage key: input tokens, output tokens, input cost, output cost, and whether each was seen.
_IN, _OUT, _IN_COST, _OUT_COST, _HAS_IN, _HAS_OUT, _HAS_COST = range(7)

_live: weakref.WeakSet[Accounting] = weakref.WeakSet()
_OBSERVED = (names.METRIC_LLM_TOKEN_USAGE, names.METRIC_LLM_COST, names.METRIC_LLM_REQUESTS,
             names.METRIC_QUOTA_TOKENS, names.METRIC_QUOTA_COST)


class _Snapshot:
    """The counters as one collection reports them, and which of them have reported."""

    __slots__ = ("principals", "read_by", "requests", "usage")

    def __init__(self, usage: list[tuple[tuple[Any, ...], list[Any]]], requests: list[tuple[tuple[Any, ...], int]],
                 principals: list[tuple[tuple[Any, ...], list[Any]]]) -> None:
        self.usage, self.requests, self.principals = usage, requests, principals
        self.read_by: set[str] = set()


def _attributes(keys: Sequence[str], values: Iterable[Any]) -> dict[str, Any]:
    """Label values made valid text (model names, provider, server address come from responses and
    callers): built once per label set, never per call."""
    return {k: valid_text(v) if isinstance(v, str) else v for k, v in zip(keys, values, strict=False)
            if v is not None}


class Accounting:
    def __init__(self, meter: Meter, dimensions: Sequence[str] = names.DEFAULT_METRIC_DIMENSIONS,
                 cardinality_limit: int = 5000, series_limit: int = DEFAULT_SERIES_LIMIT,
                 currency: str = "USD", app: str | None = None) -> None:
        self._dimensions = tuple(dimensions)
        # the app on every counter point (a constant: no series added, nothing on the call path)
        self._app: tuple[tuple[str, Any], ...] = ((names.SERVICE_NAME, valid_text(app)),) if app else ()
        self._currency = currency
        self.labels = DimensionValueCap(self._dimensions, cardinality_limit)
        self.series = SeriesCap(self._dimensions, series_limit)
        self.principals = PrincipalUsage(self._dimensions, series_limit, currency, self._app)
        self._usage_keys = _USAGE_KEYS + self._dimensions
        self._request_keys = (*self._usage_keys, names.ERROR_TYPE)
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._usage: dict[tuple[Any, ...], list[Any]] = {}
        self._requests: dict[tuple[Any, ...], int] = {}
        # queued per call: (histogram attributes, input, output, duration, time to first chunk)
        self._pending: list[tuple[Any, ...]] = []
        self._histogram_attrs: dict[tuple[Any, ...], tuple[dict[str, Any], ...]] = {}
        self._observed_attrs: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._drainer: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False
        self._snapshot: _Snapshot | None = None  # what the current collection's callbacks report
        self._snapshot_lock = threading.Lock()

        self._token_histogram = meter.create_histogram(
            names.METRIC_TOKEN_USAGE, unit=names.UNIT_TOKEN,
            description="Number of input and output tokens used per call.",
            explicit_bucket_boundaries_advisory=list(names.TOKEN_USAGE_BUCKETS))
        self._duration_histogram = meter.create_histogram(
            names.METRIC_OPERATION_DURATION, unit=names.UNIT_SECONDS,
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS))
        self._ttfc_histogram = meter.create_histogram(
            names.METRIC_TIME_TO_FIRST_CHUNK, unit=names.UNIT_SECONDS,
            description="Time from the start of a streaming call to its first chunk.",
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS))
        meter.create_observable_counter(
            names.METRIC_LLM_TOKEN_USAGE, callbacks=[self._observe_tokens], unit=names.UNIT_TOKEN,
            description="Tokens used, by token type, attributed to user and department.")
        meter.create_observable_counter(
            names.METRIC_LLM_COST, callbacks=[self._observe_costs], unit=names.UNIT_CURRENCY,
            description="Cost of LLM calls in the reporting currency, by token type, attributed to user and "
                        "department.")
        meter.create_observable_counter(
            names.METRIC_LLM_REQUESTS, callbacks=[self._observe_requests], unit=names.UNIT_REQUEST,
            description="LLM calls, attributed to user and department, with error.type on failures.")
        self._observed = len(_OBSERVED) if self._dimensions else len(_OBSERVED) - 2
        if self._dimensions:
            meter.create_observable_counter(
                names.METRIC_QUOTA_TOKENS, unit=names.UNIT_TOKEN,
                callbacks=[lambda _: self._observe_principals(names.METRIC_QUOTA_TOKENS)],
                description="Tokens used per principal (the attribution dimensions only): what the quota rules read.")
            meter.create_observable_counter(
                names.METRIC_QUOTA_COST, unit=names.UNIT_CURRENCY,
                callbacks=[lambda _: self._observe_principals(names.METRIC_QUOTA_COST)],
                description="Cost per principal in the reporting currency: what the quota rules read.")
        _live.add(self)

    # --- call path ------------------------------------------------------------------------------
    def add(self, record: CallRecord, duration_s: float, attribution: Mapping[str, str],
            cost: Cost | None = None, refused: bool = False) -> None:
        semconv = (record.operation, record.provider, record.request_model, record.response_model,
                   record.server_address, record.server_port, record.error_type)
        hist_attrs = self._histogram_attrs.get(semconv) or self._new_histogram_attrs(semconv)
        base = (record.operation, record.provider, record.request_model, record.usage_source)
        dims = tuple(map(attribution.get, self._dimensions))
        input_tokens, output_tokens = record.input_tokens, record.output_tokens
        if refused:
            self._add_refused(base, dims, record.error_type)
            return
        with self._lock:
            if dims:
                dims = self.labels.apply(dims)
                self.principals.add(dims, (input_tokens or 0) + (output_tokens or 0),
                                    None if cost is None else cost.input + cost.output)
                if self.series.near(len(self._usage), len(self._requests)):
                    dims = self.series.fit(base, record.error_type, dims, self._usage, self._requests)
            key = base + dims
            entry = self._usage.get(key)
            if entry is None:
                entry = self._usage[key] = [0, 0, 0.0, 0.0, False, False, False]
            if input_tokens is not None:
                entry[_IN] += input_tokens
                entry[_HAS_IN] = True
            if output_tokens is not None:
                entry[_OUT] += output_tokens
                entry[_HAS_OUT] = True
            if cost is not None:
                entry[_IN_COST] += cost.input
                entry[_OUT_COST] += cost.output
                entry[_HAS_COST] = True
            rkey = (*key, record.error_type)
            self._requests[rkey] = self._requests.get(rkey, 0) + 1
            pending = self._pending
            pending.append((hist_attrs, input_tokens, output_tokens, duration_s, record.time_to_first_chunk_s))
            full = len(pending) >= _DRAIN_THRESHOLD
        if full:
            self._wake_drainer()

    def _add_refused(self, base: tuple[Any, ...], dims: tuple[Any, ...], error_type: str | None) -> None:
        """Count a refused call only under names that already hold their place under the cap (a user
        blocked after spending shows as refused; made-up names add nothing, not even a place), and never
        past the series limit. llm.guard.decisions counts every refusal anyway."""
        rkey = (*base, *dims, error_type)
        requests = self._requests
        with self._lock:
            if rkey in requests:
                requests[rkey] += 1
            elif self.labels.known(dims) and not self.series.near(len(self._usage), len(requests)):
                requests[rkey] = 1

    def _new_histogram_attrs(self, semconv: tuple[Any, ...]) -> tuple[dict[str, Any], ...]:
        common = _attributes(_SEMCONV_KEYS, semconv[:-1])
        attrs = ({**common, names.GEN_AI_TOKEN_TYPE: names.TOKEN_TYPE_INPUT},
                 {**common, names.GEN_AI_TOKEN_TYPE: names.TOKEN_TYPE_OUTPUT},
                 _attributes((*_SEMCONV_KEYS, names.ERROR_TYPE), semconv))
        self._histogram_attrs[semconv] = attrs
        return attrs

    def calls_seen(self) -> tuple[tuple[tuple[str, str], ...], dict[str, int]]:
        """((provider, request model) called, calls per llm.usage.source): read off the request counters."""
        models: set[tuple[str, str]] = set()
        sources: dict[str, int] = {}
        with self._lock:
            for key, calls in self._requests.items():
                models.add((key[1], key[2]))
                source = key[3] or "none"
                sources[source] = sources.get(source, 0) + calls
        return tuple(sorted(models)), sources

    @property
    def series_limit(self) -> int:
        return self.series.limit

    @property
    def series_folded_calls(self) -> int:
        return self.series.folded_calls

    # --- collection path -------------------------------------------------------------------------
    def drain(self) -> None:
        """Record queued histogram points into the SDK histograms. One drain at a time: a collection
        that drains while the drain thread is recording waits for it, so no point taken off the queue
        misses the collection that follows it."""
        with self._drain_lock:
            with self._lock:
                pending, self._pending = self._pending, []
            tokens, duration, ttfc = self._token_histogram, self._duration_histogram, self._ttfc_histogram
            for attrs, input_tokens, output_tokens, duration_s, first_chunk_s in pending:
                if input_tokens is not None:
                    tokens.record(input_tokens, attrs[0])
                if output_tokens is not None:
                    tokens.record(output_tokens, attrs[1])
                duration.record(duration_s, attrs[2])
                if first_chunk_s is not None:
                    ttfc.record(first_chunk_s, attrs[2])

    def _labels(self, key: tuple[Any, ...], extra: tuple[tuple[str, Any], ...] = ()) -> dict[str, Any]:
        cache_key = (key, extra)
        attrs = self._observed_attrs.get(cache_key)
        if attrs is None:
            keys = self._request_keys if len(key) == len(self._request_keys) else self._usage_keys
            attrs = self._observed_attrs[cache_key] = {**_attributes(keys, key), **dict(extra), **dict(self._app)}
        return attrs

    def collect(self) -> _Snapshot:
        """The one point where a collection reads the call path's aggregates: queued histogram points
        recorded, counters copied once."""
        self.drain()
        with self._lock:
            usage = [(key, list(entry)) for key, entry in self._usage.items()]
            requests = list(self._requests.items())
            principals = self.principals.snapshot()
        return _Snapshot(usage, requests, principals)

    def _snapshot_for(self, instrument: str) -> _Snapshot:
        """The snapshot of the collection under way: the first callback of a collection takes it (a
        callback that already reported from the current one starts the next collection)."""
        with self._snapshot_lock:
            snapshot = self._snapshot
            if snapshot is None or instrument in snapshot.read_by:
                snapshot = self._snapshot = self.collect()
            snapshot.read_by.add(instrument)
            if len(snapshot.read_by) == self._observed:
                self._snapshot = None  # all reported: nothing kept between collections
            return snapshot

    def _observe_tokens(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            out = []
            for key, entry in self._snapshot_for(names.METRIC_LLM_TOKEN_USAGE).usage:
                if entry[_HAS_IN]:
                    out.append(Observation(entry[_IN], self._labels(key, _INPUT)))
                if entry[_HAS_OUT]:
                    out.append(Observation(entry[_OUT], self._labels(key, _OUTPUT)))
            return out
        except Exception:
            internal_error("observe llm.token.usage")
            return []

    def _observe_costs(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            currency = ((names.CURRENCY, self._currency),)
            out = []
            for key, entry in self._snapshot_for(names.METRIC_LLM_COST).usage:
                if entry[_HAS_COST]:
                    if entry[_HAS_IN]:
                        out.append(Observation(entry[_IN_COST], self._labels(key, _INPUT + currency)))
                    if entry[_HAS_OUT]:
                        out.append(Observation(entry[_OUT_COST], self._labels(key, _OUTPUT + currency)))
            return out
        except Exception:
            internal_error("observe llm.cost")
            return []

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            requests = self._snapshot_for(names.METRIC_LLM_REQUESTS).requests
            return [Observation(count, self._labels(key)) for key, count in requests]
        except Exception:
            internal_error("observe llm.requests")
            return []

    def _observe_principals(self, instrument: str) -> Iterable[Observation]:
        try:
            principals = self._snapshot_for(instrument).principals
            if instrument == names.METRIC_QUOTA_TOKENS:
                return self.principals.token_observations(principals)
            return self.principals.cost_observations(principals)
        except Exception:
            internal_error(f"observe {instrument}")
            return []

    def totals(self) -> dict[str, float]:
        """Process totals (tokens by type, cost, requests), for `doctor` and tests."""
        with self._lock:
            usage = list(self._usage.values())
            requests = sum(self._requests.values())
        return {"input_tokens": sum(e[_IN] for e in usage), "output_tokens": sum(e[_OUT] for e in usage),
                "cost": sum(e[_IN_COST] + e[_OUT_COST] for e in usage), "requests": requests}

    # --- drain thread ------------------------------------------------------------------------------
    def _wake_drainer(self) -> None:
        drainer = self._drainer
        if drainer is None or not drainer.is_alive():
            drainer = self._drainer = threading.Thread(
                target=_drain_loop, args=(weakref.ref(self), self._wake), name="otel-tokens-drain", daemon=True)
            drainer.start()
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self.drain()

    def _after_fork_in_child(self) -> None:
        # A forked worker reports only its own calls; the parent's totals stay the parent's.
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._snapshot = None  # the parent's numbers: never reported by the child
        self._usage.clear()
        self._requests.clear()
        self._pending = []
        self._drainer = None
        self._wake = threading.Event()
        self.labels.reset()
        self.series.folded_calls = 0
        self.principals.reset()


_INPUT = ((names.GEN_AI_TOKEN_TYPE, names.TOKEN_TYPE_INPUT),)
_OUTPUT = ((names.GEN_AI_TOKEN_TYPE, names.TOKEN_TYPE_OUTPUT),)


def _drain_loop(ref: weakref.ref[Accounting], wake: threading.Event) -> None:
    while True:
        wake.wait(5.0)
        wake.clear()
        accounting = ref()
        if accounting is None:
            return
        try:
            accounting.drain()
        except Exception:
            internal_error("histogram drain")
        if accounting._closed:
            return
        del accounting


def _reset_after_fork() -> None:
    for accounting in list(_live):
        accounting._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
