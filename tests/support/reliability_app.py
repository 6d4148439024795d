"""Helpers for tests/integrations/test_reliability.py: telemetry backends that are healthy, refuse
connections, hang or answer 503;
an OTLP/HTTP export pipeline pointed at them; process measurements (RSS, live objects, log records); and an
in-process replay of recorded OpenAI server answers (httpx2.MockTransport) for the long soak."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

# -- process measurements ----------------------------------------------------------------------------------------


def rss_mb() -> float:
    """Resident set size of this process in MiB, from /proc/self/status (VmRSS)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class LogCounter(logging.Handler):
    """Counts the records of the `opentelemetry` and `otel_tokens` logger trees (WARNING and up, what reaches a
    default-configured app), without changing any logger's level."""

    ROOTS = ("opentelemetry", "otel_tokens")

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def count(self, root: str) -> int:
        return sum(1 for r in self.records if r.name == root or r.name.startswith(root + "."))

    def snapshot(self) -> dict[str, int]:
        return {root: self.count(root) for root in self.ROOTS}

    def __enter__(self) -> LogCounter:
        for root in self.ROOTS:
            logging.getLogger(root).addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for root in self.ROOTS:
            logging.getLogger(root).removeHandler(self)


class SpanBalance(SpanProcessor):
    """Counts spans started and ended: an unended span shows as started > ended."""

    def __init__(self) -> None:
        self.started = 0
        self.ended = 0
        self._lock = threading.Lock()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        with self._lock:
            self.started += 1

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            self.ended += 1


# -- telemetry backends ------------------------------------------------------------------------------------------


class _OTLPHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _OTLPServer

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.owner.received += 1
        self.server.owner.bodies.append((self.path, body))
        status = self.server.owner.status
        body = b"" if status == 200 else b"unavailable"
        self.send_response(status)
        self.send_header("content-type", "application/x-protobuf" if status == 200 else "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _OTLPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: OTLPBackend


class OTLPBackend:
    """An OTLP/HTTP receiver on 127.0.0.1 answering every export with `status` (200: healthy, 503: overloaded)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received = 0
        self.bodies: list[tuple[str, bytes]] = []  # (path, body) of every export
        self._httpd = _OTLPServer(("127.0.0.1", 0), _OTLPHandler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"otlp-{status}", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def cumulative(self, metric: str, key: str) -> dict[str, float]:
        """The latest cumulative value of an OTLP sum per value of attribute `key`, over every export
        received (each attribute set's highest value: a cumulative counter only grows)."""
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

        latest: dict[tuple[tuple[str, str], ...], float] = {}
        for path, body in self.bodies:
            if not path.endswith("/v1/metrics"):
                continue
            request = ExportMetricsServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    for item in scope.metrics:
                        if item.name != metric:
                            continue
                        for point in item.sum.data_points:
                            labels = tuple(sorted((a.key, a.value.string_value) for a in point.attributes))
                            value = point.as_int or point.as_double
                            latest[labels] = max(latest.get(labels, 0), value)
        totals: dict[str, float] = {}
        for labels, value in latest.items():
            name = dict(labels).get(key, "")
            totals[name] = totals.get(name, 0) + value
        return totals

    def __enter__(self) -> OTLPBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class HangingBackend:
    """Accepts connections and never reads or answers: the exporter waits until its own timeout."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(0.1)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="otlp-hanging", daemon=True)
        self.accepted = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)  # held open, never read: the request sits in the socket buffer
            self.accepted += 1

    def __enter__(self) -> HangingBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self._listener.close()


class RefusingBackend:
    """An endpoint on a free local port where nothing listens: every connection is refused."""

    def __init__(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RefusingBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


# -- OTLP pipeline -------------------------------------------------------------------------------------------------


class CountingSpanExporter(OTLPSpanExporter):
    """OTLPSpanExporter that counts its export attempts (each one may log a line when the backend is broken)."""

    attempts = 0

    def export(self, spans: Any) -> Any:
        self.attempts += 1
        return super().export(spans)


class CountingMetricExporter(OTLPMetricExporter):
    attempts = 0

    def export(self, metrics_data: Any, timeout_millis: float | None = 10000, **kwargs: Any) -> Any:
        self.attempts += 1
        return super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)


class Exports:
    """One backend's share of the SDK's standard export setup: a BatchSpanProcessor and a
    PeriodicExportingMetricReader with OTLP/HTTP exporters, short intervals (so exports keep running while the app
    is measured) and a bounded exporter timeout."""

    def __init__(self, endpoint: str, timeout_s: float = 0.5, interval_ms: int = 500) -> None:
        self.span_exporter = CountingSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=timeout_s)
        self.metric_exporter = CountingMetricExporter(endpoint=f"{endpoint}/v1/metrics", timeout=timeout_s)
        self.processor = BatchSpanProcessor(self.span_exporter, schedule_delay_millis=interval_ms,
                                            export_timeout_millis=timeout_s * 1000)
        self.reader = PeriodicExportingMetricReader(self.metric_exporter, export_interval_millis=interval_ms,
                                                    export_timeout_millis=timeout_s * 1000)

    @property
    def attempts(self) -> int:
        return self.span_exporter.attempts + self.metric_exporter.attempts


class SpanRouter(SpanProcessor):
    """Hands each span to the processor of the backend currently chosen, so two backends can be compared in
    alternating blocks of calls, in the same process and the same minutes, with one instrumentation."""

    def __init__(self, *targets: SpanProcessor) -> None:
        self.targets = targets
        self.target = targets[0]

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.target.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self.target.on_end(span)

    def shutdown(self) -> None:
        for target in self.targets:
            target.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(target.force_flush(timeout_millis) for target in self.targets)


class Providers:
    """A TracerProvider routing spans to one of several backends' exports, and a MeterProvider exporting to all."""

    def __init__(self, *exports: Exports) -> None:
        self.exports = exports
        self.router = SpanRouter(*(e.processor for e in exports))
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(self.router)
        self.meter_provider = MeterProvider(metric_readers=[e.reader for e in exports])
        self.shutdown_s: float | None = None

    def route_to(self, exports: Exports) -> None:
        self.router.target = exports.processor

    def shutdown(self, timeout_s: float = 10.0) -> bool:
        """Shut both providers down in a helper thread, waiting at most `timeout_s`; True when they finished.
        (TracerProvider.shutdown takes no timeout; BatchSpanProcessor would wait up to 30 s for its worker.)"""
        start = time.perf_counter()

        def stop() -> None:
            self.meter_provider.shutdown(timeout_millis=timeout_s * 1000 / 2)
            self.tracer_provider.shutdown()

        thread = threading.Thread(target=stop, name="otlp-shutdown", daemon=True)
        thread.start()
        thread.join(timeout_s)
        self.shutdown_s = time.perf_counter() - start
        return not thread.is_alive()


# -- replay of recorded OpenAI answers ----------------------------------------------------------------------------


def _request_key(body: dict[str, Any]) -> str:
    """What the local server's answer depends on: the route's inputs, streaming, and whether usage was asked for."""
    asked = bool((body.get("stream_options") or {}).get("include_usage"))
    inputs = body.get("messages", body.get("prompt"))
    return json.dumps([body.get("model"), inputs, bool(body.get("stream")), asked], sort_keys=True)


@dataclass
class Recorded:
    status: int
    content_type: str
    content: bytes


class Replay:
    """Answers recorded once from a real `OpenAIServer` over HTTP, replayed in process through
    `httpx2.MockTransport`: the same bytes the SDK parses over the network, without the network."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], Recorded] = {}  # (route, request key) -> answer
        self.requests = 0

    def record(self, base_url: str, route: str, body: dict[str, Any]) -> None:
        import httpx2

        with httpx2.Client() as client:
            response = client.post(f"{base_url}{route}", json=body, headers={"authorization": "Bearer test"})
            self.answers[(route, _request_key(body))] = Recorded(
                response.status_code, response.headers.get("content-type", "application/json"), response.content)

    def handler(self, request: Any) -> Any:
        import httpx2

        self.requests += 1
        route = request.url.path
        if route.startswith("/v1"):
            route = route[len("/v1"):]
        answer = self.answers.get((route, _request_key(json.loads(request.content))))
        if answer is None:
            return httpx2.Response(404, json={"error": {"message": f"nothing recorded for {route}"}})
        return httpx2.Response(answer.status, headers={"content-type": answer.content_type}, content=answer.content)

    def transport(self) -> Any:
        import httpx2

        return httpx2.MockTransport(self.handler)


# -- misc ----------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_connection_resets(server: Any) -> Iterator[None]:
    """The local OpenAI server prints a traceback for every connection the client resets (the SDK closes a
    connection with unread bytes after an early-closed or abandoned stream); keep only other errors."""
    import sys

    httpd = server._httpd
    original: Callable[[Any, Any], None] = httpd.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            original(request, client_address)

    httpd.handle_error = handle_error
    try:
        yield
    finally:
        httpd.handle_error = original
