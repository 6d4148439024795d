"""Who is charged for a web request's LLM calls, taken from the authenticated request: an ASGI and a
WSGI middleware, and (zero-code, under `opentelemetry-instrument`) the same mapping applied where
OpenTelemetry's ASGI/WSGI instrumentation already wraps the app."""

from otel_tokens.web.asgi import UsageContextMiddleware
from otel_tokens.web.wsgi import UsageContextWSGIMiddleware

__all__ = ["UsageContextMiddleware", "UsageContextWSGIMiddleware"]
