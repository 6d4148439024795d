"""otel-tokens: token usage of every LLM call as OpenTelemetry spans and metrics, attributed and alertable."""

from otel_tokens.attribution.context import current_attribution, usage_context
from otel_tokens.instrumentor import TokenUsageInstrumentor
from otel_tokens.quota.decision import QuotaExceededError
from otel_tokens.version import __version__

__all__ = ["QuotaExceededError", "TokenUsageInstrumentor", "__version__", "current_attribution", "usage_context"]
