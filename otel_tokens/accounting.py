"""The metric side of the recorder, aggregated in process so the call path stays cheap.

The OTel SDK costs ~15 us per synchronous `add()`/`record()` here; a call touches five
instruments. Instead, the accounting counters are dicts keyed by the label tuple, exported by
observable counters at collection time (cumulative totals, so any temporality is right), and
the semconv histogram points are queued and recorded into the real histograms off the call
path: by the first observable callback of each collection (the SDK runs callbacks before it
reads storage, so the points land in that same collection) or by a drain thread when the queue
grows. What the call pays is one lock and a few dict updates.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation

from . import names
from .record import CallRecord
from .safety import internal_error

_DRAIN_THRESHOLD = 1024  # queued histogram points before the drain thread is woken

_TOKEN_KEYS = (names.GEN_AI_OPERATION_NAME, names.GEN_AI_PROVIDER_NAME, names.GEN_AI_REQUEST_MODEL,
               names.GEN_AI_TOKEN_TYPE, names.LLM_USAGE_SOURCE)
_REQUEST_KEYS = (names.GEN_AI_OPERATION_NAME, names.GEN_AI_PROVIDER_NAME, names.GEN_AI_REQUEST_MODEL,
                 names.LLM_USAGE_SOURCE, names.ERROR_TYPE)
_SEMCONV_KEYS = (names.GEN_AI_OPERATION_NAME, names.GEN_AI_PROVIDER_NAME, names.GEN_AI_REQUEST_MODEL,
                 names.GEN_AI_RESPONSE_MODEL, names.SERVER_ADDRESS, names.SERVER_PORT)

_live: weakref.WeakSet[Accounting] = weakref.WeakSet()


def _attributes(keys: Sequence[str], values: Iterable[Any]) -> dict[str, Any]:
    return {k: v for k, v in zip(keys, values, strict=False) if v is not None}


class Accounting:
    def __init__(self, meter: Meter, dimensions: Sequence[str] = names.DEFAULT_METRIC_DIMENSIONS) -> None:
        self._dimensions = tuple(dimensions)
        self._token_keys = _TOKEN_KEYS + self._dimensions
        self._request_keys = _REQUEST_KEYS + self._dimensions
        self._lock = threading.Lock()
        self._tokens: dict[tuple[Any, ...], int] = {}
        self._requests: dict[tuple[Any, ...], int] = {}
        self._pending: list[tuple[Histogram, float, Mapping[str, Any]]] = []
        self._attr_cache: dict[tuple[Any, ...], Mapping[str, Any]] = {}
        self._drainer: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False

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
            names.METRIC_LLM_REQUESTS, callbacks=[self._observe_requests], unit=names.UNIT_REQUEST,
            description="LLM calls, attributed to user and department, with error.type on failures.")
        _live.add(self)

    # --- call path ------------------------------------------------------------------------------
    def add(self, record: CallRecord, duration_s: float, attribution: Mapping[str, str]) -> None:
        dims = tuple(attribution.get(d) for d in self._dimensions)
        base = (record.operation, record.provider, record.request_model)
        semconv = base + (record.response_model, record.server_address, record.server_port)
        cache = self._attr_cache
        points = []
        with self._lock:
            tokens = self._tokens
            for token_type, count in ((names.TOKEN_TYPE_INPUT, record.input_tokens),
                                      (names.TOKEN_TYPE_OUTPUT, record.output_tokens)):
                if count is None:
                    continue
                key = base + (token_type, record.usage_source) + dims
                tokens[key] = tokens.get(key, 0) + count
                hkey = semconv + (token_type,)
                attrs = cache.get(hkey)
                if attrs is None:
                    attrs = cache[hkey] = {**_attributes(_SEMCONV_KEYS, semconv), names.GEN_AI_TOKEN_TYPE: token_type}
                points.append((self._token_histogram, count, attrs))
            rkey = base + (record.usage_source, record.error_type) + dims
            self._requests[rkey] = self._requests.get(rkey, 0) + 1
            dkey = semconv + ("error", record.error_type)
            attrs = cache.get(dkey)
            if attrs is None:
                attrs = cache[dkey] = _attributes(_SEMCONV_KEYS + (names.ERROR_TYPE,), semconv + (record.error_type,))
            points.append((self._duration_histogram, duration_s, attrs))
            if record.time_to_first_chunk_s is not None:
                points.append((self._ttfc_histogram, record.time_to_first_chunk_s, attrs))
            pending = self._pending
            pending.extend(points)
            full = len(pending) >= _DRAIN_THRESHOLD
        if full:
            self._wake_drainer()

    # --- collection path -------------------------------------------------------------------------
    def drain(self) -> None:
        """Record queued histogram points into the SDK histograms."""
        with self._lock:
            pending, self._pending = self._pending, []
        for histogram, value, attrs in pending:
            histogram.record(value, attrs)

    def _observe_tokens(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            self.drain()
            return self._observe(self._tokens, self._token_keys)
        except Exception:
            internal_error("observe llm.token.usage")
            return []

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            self.drain()
            return self._observe(self._requests, self._request_keys)
        except Exception:
            internal_error("observe llm.requests")
            return []

    def _observe(self, totals: dict[tuple[Any, ...], int], keys: Sequence[str]) -> list[Observation]:
        with self._lock:
            items = list(totals.items())
        return [Observation(value, _attributes(keys, key)) for key, value in items]

    def snapshot(self) -> dict[str, dict[tuple[Any, ...], int]]:
        """Totals so far, for `doctor` and tests."""
        with self._lock:
            return {names.METRIC_LLM_TOKEN_USAGE: dict(self._tokens), names.METRIC_LLM_REQUESTS: dict(self._requests)}

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
        self._tokens.clear()
        self._requests.clear()
        self._pending = []
        self._drainer = None
        self._wake = threading.Event()


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
