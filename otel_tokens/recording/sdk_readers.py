"""What the OpenTelemetry SDK's metric readers are set to, read from SDK internals defensively (any
surprise gives the SDK's documented default): the series limit the accounting must stay under, and
whether a reader exports counters as deltas (what an outage then loses)."""

from __future__ import annotations

from typing import Any

from otel_tokens.config.settings import DEFAULT_SERIES_LIMIT


def sdk_series_limit(meter_provider: Any = None) -> int:
    """The smallest cardinality limit the SDK's metric readers apply to observable counters.

    Read from SDK internals defensively: any surprise gives the SDK's documented default.
    """
    try:
        from opentelemetry import metrics

        provider = meter_provider or metrics.get_meter_provider()
        readers = provider._metric_readers
        from opentelemetry.sdk.metrics._internal.instrument import _ObservableCounter

        limits = [reader._instrument_class_cardinality_limit[_ObservableCounter] for reader in readers]
        return min(limits) if limits else DEFAULT_SERIES_LIMIT
    except Exception:
        return DEFAULT_SERIES_LIMIT


def raise_sdk_series_limit(limit: int, meter_provider: Any = None) -> bool:
    """Raise the SDK readers' cardinality limit for observable counters to `limit` (never lower it), so that
    OTEL_TOKENS_SERIES_LIMIT works under `opentelemetry-instrument`, which builds the readers with the default
    2000 and offers no variable for it. Must run before the first collection of our counters (the SDK reads the
    limit when it first stores an instrument). Set through SDK internals defensively: False if not possible."""
    try:
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics._internal.instrument import _ObservableCounter

        provider = meter_provider or metrics.get_meter_provider()
        raised = False
        for reader in provider._metric_readers:
            limits = reader._instrument_class_cardinality_limit
            if limits.get(_ObservableCounter, DEFAULT_SERIES_LIMIT) < limit:
                limits[_ObservableCounter] = limit
                raised = True
        return raised
    except Exception:
        return False


def delta_readers(meter_provider: Any = None) -> int:
    """How many of the SDK's metric readers ask for delta temporality on counters (read defensively)."""
    try:
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics._internal.instrument import _Counter, _ObservableCounter
        from opentelemetry.sdk.metrics.export import AggregationTemporality

        provider = meter_provider or metrics.get_meter_provider()
        return sum(1 for reader in provider._metric_readers
                   if AggregationTemporality.DELTA in (reader._instrument_class_temporality.get(_ObservableCounter),
                                                       reader._instrument_class_temporality.get(_Counter)))
    except Exception:
        return 0


def service_name(meter_provider: Any = None) -> str:
    """The app this process is charged as: `service.name` of the meter provider's resource (what the
    collector's `job` and `service_name` show), else the resource the SDK would build from the environment
    (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES; the SDK default `unknown_service:python` when neither sets it)."""
    try:
        from opentelemetry import metrics

        provider = meter_provider or metrics.get_meter_provider()
        name = provider._sdk_config.resource.attributes.get("service.name")
        if isinstance(name, str) and name:
            return name
    except Exception:
        pass
    try:
        from opentelemetry.sdk.resources import Resource

        return str(Resource.create().attributes.get("service.name") or "unknown_service")
    except Exception:
        return "unknown_service"
