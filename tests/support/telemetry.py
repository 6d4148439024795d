"""In-memory telemetry for tests: SDK providers with an in-memory span exporter and metric reader,
and readers that sum what the package recorded."""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler

from otel_tokens import names


class LogRecords(logging.Handler):
    """Every Python log record it is attached to, at DEBUG and up."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Telemetry:
    spans_exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self) -> list[ReadableSpan]:
        return list(self.spans_exporter.get_finished_spans())

    def span(self) -> ReadableSpan:
        spans = self.spans()
        assert len(spans) == 1, [s.name for s in spans]
        return spans[0]

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> data points of the last collection."""
        out: dict[str, list[Any]] = defaultdict(list)
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out[metric.name].extend(metric.data.data_points)
        return out

    def token_totals(self, *keys: str) -> dict[tuple[Any, ...], int]:
        """Sum of llm.token.usage grouped by the given attribute keys."""
        totals: dict[tuple[Any, ...], int] = defaultdict(int)
        for point in self.metrics().get(names.METRIC_LLM_TOKEN_USAGE, []):
            totals[tuple(point.attributes.get(k) for k in keys)] += point.value
        return dict(totals)


def make_telemetry(sampler: Sampler = ALWAYS_ON, series_limit: int | None = None,
                   ) -> tuple[Telemetry, TracerProvider, MeterProvider]:
    """In-memory providers; `series_limit` raises the reader's cardinality limit (SDK default 2000)."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    limits = None
    if series_limit is not None:
        from opentelemetry.sdk.metrics import Histogram, ObservableCounter

        limits = {ObservableCounter: series_limit, Histogram: series_limit}
    reader = InMemoryMetricReader(cardinality_limits=limits)
    meter_provider = MeterProvider(metric_readers=[reader])
    return Telemetry(exporter, reader), tracer_provider, meter_provider


@contextlib.contextmanager
def instrumented(settings: Any = None) -> Iterator[Telemetry]:
    """The package instrumented with `settings` (a config.Settings) on in-memory telemetry."""
    from otel_tokens import TokenUsageInstrumentor

    tel, tracer_provider, meter_provider = make_telemetry()
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, settings=settings)
    try:
        yield tel
    finally:
        instrumentor.uninstrument()
