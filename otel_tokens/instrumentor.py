"""`TokenUsageInstrumentor`: the entry point `opentelemetry-instrument` loads."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from importlib.util import find_spec
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.dependencies import DependencyConflict, get_dependency_conflicts
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from otel_tokens import graceful_stop, names
from otel_tokens.attribution import context as attribution
from otel_tokens.attribution import directory
from otel_tokens.attribution.directory import install_directory
from otel_tokens.attribution.threads import instrument_threads, uninstrument_threads
from otel_tokens.config import load_settings
from otel_tokens.integrations import litellm as litellm_integration
from otel_tokens.integrations import openai as openai_integration
from otel_tokens.integrations import transformers as transformers_integration
from otel_tokens.logs import logger
from otel_tokens.recording.recorder import Recorder
from otel_tokens.recording.sdk_readers import (
    delta_readers,
    raise_sdk_series_limit,
    sdk_series_limit,
    service_name,
)
from otel_tokens.sdk_setup import nothing_exported_warning
from otel_tokens.version import __version__
from otel_tokens.web import starlette_refusals
from otel_tokens.web import zero_code as web_zero_code

# (integration module, import name); each instruments its library only when it is installed.
INTEGRATIONS = ((transformers_integration, "transformers"), (openai_integration, "openai"),
                (litellm_integration, "litellm"))

# Any one of these suffices (the `instruments-any` extra in pyproject.toml says the same).
INSTRUMENTS_ANY: tuple[str, ...] = tuple(module.REQUIREMENT for module, _ in INTEGRATIONS)


class TokenUsageInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Token usage, attribution and timing for every supported LLM client library that is installed."""

    _recorder: Recorder | None = None
    _active: list[Any] = []  # noqa: RUF012 - replaced, never mutated in place

    @property
    def recorder(self) -> Recorder | None:
        """The recorder in force while instrumented (its settings, prices, `stats()`), else None."""
        return self._recorder if self.is_instrumented_by_opentelemetry else None

    def instrumentation_dependencies(self) -> Collection[str]:
        return INSTRUMENTS_ANY

    def _check_dependency_conflicts(self) -> DependencyConflict | None:
        # Any one supported library is enough (the base class would require all of them).
        return get_dependency_conflicts([], INSTRUMENTS_ANY)

    def _instrument(self, **kwargs: Any) -> None:
        tracer = trace.get_tracer(names.INSTRUMENTATION_SCOPE, __version__,
                                  tracer_provider=kwargs.get("tracer_provider"), schema_url=names.SCHEMA_URL)
        meter = metrics.get_meter(names.INSTRUMENTATION_SCOPE, __version__,
                                  meter_provider=kwargs.get("meter_provider"), schema_url=names.SCHEMA_URL)
        if kwargs.get("tracer_provider") is None and kwargs.get("meter_provider") is None:
            said = nothing_exported_warning()
            if said:
                logger.warning("%s", said)
        settings = kwargs.get("settings") or load_settings()
        if settings.app is None:
            settings = replace(settings, app=service_name(kwargs.get("meter_provider")))
        sdk_limit = sdk_series_limit(kwargs.get("meter_provider"))
        if settings.series_limit is None:
            settings = replace(settings, series_limit=sdk_limit)
        elif settings.series_limit > sdk_limit and not raise_sdk_series_limit(settings.series_limit,
                                                                               kwargs.get("meter_provider")):
            logger.warning("otel-tokens: series_limit %d is above the SDK metric reader's cardinality limit %d, "
                           "which could not be raised: past %d label sets the SDK lumps series together",
                           settings.series_limit, sdk_limit, sdk_limit)
        recorder = Recorder(tracer, meter, settings)
        if delta_readers(kwargs.get("meter_provider")):
            logger.warning("otel-tokens: a metric reader exports counters with delta temporality; usage counted "
                           "while the backend is unreachable is then lost when the export fails (cumulative "
                           "loses nothing: the next export carries the totals). Set "
                           "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=cumulative")
        attribution.trust_baggage(settings.trust_baggage)
        install_directory(settings)
        if settings.trusted_headers:
            web_zero_code.instrument(settings.trusted_headers, settings.trusted_proxies, settings.trusted_groups)
        starlette_refusals.instrument()
        recorder.start()
        self._recorder = recorder
        self._active = []
        for module, import_name in INTEGRATIONS:
            if find_spec(import_name) is not None:
                module.instrument(recorder)
                self._active.append(module)
        instrument_threads()
        graceful_stop.install(kwargs.get("meter_provider") or metrics.get_meter_provider(),
                              kwargs.get("tracer_provider") or trace.get_tracer_provider())

    def _uninstrument(self, **kwargs: Any) -> None:
        for module in self._active:
            module.uninstrument()
        self._active = []
        uninstrument_threads()
        graceful_stop.uninstall()
        attribution.trust_baggage(False)
        directory.install(None)
        web_zero_code.uninstrument()
        starlette_refusals.uninstrument()
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None
