"""otel-tokens: token usage of every LLM call as OpenTelemetry spans and metrics, attributed and alertable."""

from otel_tokens.attribution.context import current_attribution, usage_context
from otel_tokens.instrumentor import TokenUsageInstrumentor
from otel_tokens.quota.decision import QuotaExceededError, RateLimitExceededError
from otel_tokens.quota.status import QuotaStatus, WindowStatus
from otel_tokens.version import __version__


def quota_status(user_id: str | None = None, department: str | None = None, app: str | None = None) -> QuotaStatus:
    """Where a user, their department and the app stand, per window with a limit: used, limit, remaining,
    ratio, reset time (budget mode; `available` is False without it or when its store does not answer). With
    no argument, the principals of the usage_context in force and this process's app (its service.name), as a
    call made here would be charged."""
    from otel_tokens.quota.status import budget_status, principals

    recorder = TokenUsageInstrumentor().recorder
    budget = recorder.enforcement.budget if recorder is not None else None
    if recorder is None or budget is None:
        return QuotaStatus()
    return budget_status(budget, principals(user_id, department, app, recorder.enforcement.app))


__all__ = ["QuotaExceededError", "QuotaStatus", "RateLimitExceededError", "TokenUsageInstrumentor", "WindowStatus",
           "__version__", "current_attribution", "quota_status", "usage_context"]
