"""A real OTLP/gRPC receiver on 127.0.0.1 (grpcio, the OTLP protos' own service stubs): what an app under
`opentelemetry-instrument` with the distro's defaults (OTLP over gRPC to :4317) exports, collected here."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any


class OtlpGrpcReceiver:
    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        self.spans: list[Any] = []
        self.metrics: list[Any] = []
        self.logs = 0
        lock, owner = threading.Lock(), self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method's name
                with lock:
                    owner.spans += [s for r in request.resource_spans for ss in r.scope_spans for s in ss.spans]
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
                with lock:
                    owner.metrics += [m for r in request.resource_metrics for sm in r.scope_metrics for m in sm.metrics]
                return metrics_service_pb2.ExportMetricsServiceResponse()

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
                with lock:
                    owner.logs += 1
                return logs_service_pb2.ExportLogsServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self.server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def token_totals(self) -> dict[tuple[str, str], int]:
        """(user.id, gen_ai.token.type) -> the last exported value of llm.token.usage."""
        out: dict[tuple[str, str], int] = {}
        for metric in self.metrics:
            if metric.name == "llm.token.usage":
                for point in metric.sum.data_points:
                    attrs = {a.key: a.value.string_value for a in point.attributes}
                    key = attrs.get("user.id", ""), attrs.get("gen_ai.token.type", "")
                    out[key] = int(point.as_int or point.as_double)
        return out

    def stop(self) -> None:
        self.server.stop(grace=None)
