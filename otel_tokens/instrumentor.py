"""`TokenUsageInstrumentor`: the entry point `opentelemetry-instrument` loads."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from importlib.util import find_spec
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.dependencies import DependencyConflict, get_dependency_conflicts
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from . import names
from .config import DEFAULT_SERIES_LIMIT, load_settings
from .integrations import openai as openai_integration
from .integrations import transformers as transformers_integration
from .recorder import Recorder
from .threads import instrument_threads, uninstrument_threads
from .version import __version__

# (integration module, import name); each instruments its library only when it is installed.
_INTEGRATIONS = ((transformers_integration, "transformers"), (openai_integration, "openai"))

# Any one of these suffices (the `instruments-any` extra in pyproject.toml says the same).
INSTRUMENTS_ANY: tuple[str, ...] = tuple(module.REQUIREMENT for module, _ in _INTEGRATIONS)


def sdk_series_limit(meter_provider: Any = None) -> int:
    """The smallest cardinality limit the SDK's metric readers apply to observable counters.

    Read from SDK internals defensively: any surprise gives the SDK's documented default.
    """
    try:
        provider = meter_provider or metrics.get_meter_provider()
        readers = provider._metric_readers
        from opentelemetry.sdk.metrics._internal.instrument import _ObservableCounter

        limits = [reader._instrument_class_cardinality_limit[_ObservableCounter] for reader in readers]
        return min(limits) if limits else DEFAULT_SERIES_LIMIT
    except Exception:
        return DEFAULT_SERIES_LIMIT


class TokenUsageInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Token usage, attribution and timing for every supported LLM client library that is installed."""

    _recorder: Recorder | None = None
    _active: list[Any] = []  # noqa: RUF012 - replaced, never mutated in place

    def instrumentation_dependencies(self) -> Collection[str]:
        return INSTRUMENTS_ANY

    def _check_dependency_conflicts(self) -> DependencyConflict | None:
        # Any one supported library is enough (the base class would require all of them).
        return get_dependency_conflicts([], INSTRUMENTS_ANY)

    def _instrument(self, **kwargs: Any) -> None:
        tracer = trace.get_tracer(names.INSTRUMENTATION_SCOPE, __version__,
                                  tracer_provider=kwargs.get("tracer_provider"))
        meter = metrics.get_meter(names.INSTRUMENTATION_SCOPE, __version__,
                                  meter_provider=kwargs.get("meter_provider"))
        settings = kwargs.get("settings") or load_settings()
        if settings.series_limit is None:
            settings = replace(settings, series_limit=sdk_series_limit(kwargs.get("meter_provider")))
        recorder = Recorder(tracer, meter, settings)
        recorder.guard.start()
        self._recorder = recorder
        self._active = []
        for module, import_name in _INTEGRATIONS:
            if find_spec(import_name) is not None:
                module.instrument(recorder)
                self._active.append(module)
        instrument_threads()

    def _uninstrument(self, **kwargs: Any) -> None:
        for module in self._active:
            module.uninstrument()
        self._active = []
        uninstrument_threads()
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None
