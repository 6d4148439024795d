"""What the OpenTelemetry agent will do with this process's telemetry, before it does it.

`opentelemetry-instrument` configures the SDK from `OTEL_*` variables with the distro's defaults (OTLP for
traces, metrics and logs, over gRPC); an exporter it asks for that is not installed fails the whole
configuration, and the app then runs with no SDK: nothing is exported and nothing says so. This module
names what the agent will ask for, what is missing and the one fix, for `doctor` and for a warning at
instrument().
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from importlib.util import find_spec

SIGNALS = ("traces", "metrics", "logs")
_PROTOCOL_COMPONENT = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
_PACKAGES = {"otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
             "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
             "prometheus": "opentelemetry-exporter-prometheus"}


def distro_installed() -> bool:
    return find_spec("opentelemetry.distro") is not None


def agent_protocol(environ: Mapping[str, str] | None = None, signal: str | None = None) -> tuple[str, str]:
    """(the OTLP protocol the agent uses, why): the variable's value, else the distro's default (grpc)."""
    environ = os.environ if environ is None else environ
    for variable in ([f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"] if signal else []) + [
            "OTEL_EXPORTER_OTLP_PROTOCOL"]:
        if environ.get(variable):
            return environ[variable].strip(), variable
    if distro_installed():
        return "grpc", "opentelemetry-distro's default"
    return "http/protobuf", "the SDK's default (no distro installed)"


def wanted_exporters(environ: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """signal -> the exporter components the agent will load (entry-point names)."""
    environ = os.environ if environ is None else environ
    out = {}
    for signal in SIGNALS:
        raw = environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp" if distro_installed() else "")
        components = []
        for name in (part.strip() for part in raw.split(",")):
            if not name or name == "none":
                continue
            if name == "otlp":
                name = _PROTOCOL_COMPONENT.get(agent_protocol(environ, signal)[0], "otlp_proto_grpc")
            components.append(name)
        out[signal] = components
    return out


def missing_exporters(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(signal, component) the agent will ask for and cannot find."""
    found = []
    for signal, components in wanted_exporters(environ).items():
        installed = {ep.name for ep in entry_points(group=f"opentelemetry_{signal}_exporter")}
        found += [(signal, component) for component in components if component not in installed]
    return found


def fix_for(missing: list[tuple[str, str]]) -> str:
    """One line: what to install, or what to turn off."""
    packages = sorted({_PACKAGES.get(component, component) for _, component in missing})
    signals = sorted({signal for signal, _ in missing})
    return (f"pip install 'otel-tokens[otlp]' (or {', '.join(packages)}), or turn the signal off: "
            + ", ".join(f"OTEL_{s.upper()}_EXPORTER=none" for s in signals))


def sdk_configured() -> bool:
    """Whether a real (SDK) tracer and meter provider are installed globally, not the API's no-op proxies."""
    from opentelemetry import metrics, trace

    tracer_provider, meter_provider = trace.get_tracer_provider(), metrics.get_meter_provider()
    return not (type(tracer_provider).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider")
                and type(meter_provider).__name__ in ("_ProxyMeterProvider", "NoOpMeterProvider"))


def nothing_exported_warning(environ: Mapping[str, str] | None = None) -> str | None:
    """The one line to log when instrument() finds no SDK: why nothing will be exported, and the fix."""
    if sdk_configured():
        return None
    missing = missing_exporters(environ)
    if missing:
        asked = ", ".join(f"{signal}: {component}" for signal, component in missing)
        return (f"otel-tokens: no OpenTelemetry SDK is configured, so nothing is exported: the agent asked for "
                f"exporters that are not installed ({asked}). Fix: {fix_for(missing)}")
    return ("otel-tokens: no OpenTelemetry SDK is configured, so nothing is exported. Run under "
            "opentelemetry-instrument with `pip install 'otel-tokens[otlp]'` (or [prometheus] and "
            "OTEL_METRICS_EXPORTER=prometheus), or set a TracerProvider and MeterProvider before instrument()")
