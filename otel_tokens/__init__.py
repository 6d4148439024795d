"""otel-tokens: token usage of every LLM call as OpenTelemetry spans and metrics, attributed and alertable."""

from .attribution import current_attribution, usage_context
from .guard import QuotaExceededError
from .instrumentor import TokenUsageInstrumentor
from .version import __version__

__all__ = ["QuotaExceededError", "TokenUsageInstrumentor", "__version__", "current_attribution", "usage_context"]
