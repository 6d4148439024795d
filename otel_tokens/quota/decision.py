"""What the guard decided about one call, and the errors a refused call raises (HTTP 429)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from otel_tokens.config.settings import Endpoint
from otel_tokens.quota import vocabulary
from otel_tokens.quota.calendar import RATE_WINDOWS


class QuotaExceededError(Exception):
    """An instrumented call refused because its user, department or app is over quota (HTTP 429): `scope` (user,
    department, app), `principal`, `window` (minute, concurrent, 24h, day, week, month, year: the one that
    would cross), `kind` (tokens, cost, requests). In budget mode `reserved` is what
    this call would have taken: usage + reserved > limit, and `retry_after` the seconds until the call would fit
    (a sliding window's oldest usage leaving it, a calendar window's end; None when unknown: the rolling 24 h
    past its limit for longer, or alert mode)."""

    http_status = 429
    retry_after: float | None = None

    def __init__(self, scope: str, principal: str, window: str, kind: str, usage: str | None, limit: str | None,
                 severity: str, reserved: str | None = None, retry_after: float | None = None) -> None:
        self.scope, self.principal, self.window, self.kind = scope, principal, window, kind
        self.usage, self.limit, self.severity, self.reserved = usage, limit, severity, reserved
        self.retry_after = retry_after
        if reserved is not None:
            super().__init__(f"{scope} {principal!r} would go over the {window} {kind} quota: {usage} used, "
                             f"{reserved} reserved for this call, limit {limit}")
            return
        detail = f" ({usage} of {limit})" if usage and limit else ""
        super().__init__(f"{scope} {principal!r} is over the {window} {kind} quota{detail}")

    @property
    def quota(self) -> str:
        """The kind (tokens, cost) under its old name, as the alerts' `quota` label spells it."""
        return self.kind


class RateLimitExceededError(QuotaExceededError):
    """Refused by a rate limit (`minute`: tokens or requests in the last 60 s) or by the calls in flight
    (`concurrent`): the caller should wait `retry_after` seconds, not a day."""


class QuotaStateUnavailableError(QuotaExceededError):
    """fail_closed and the quota state could not be read."""

    def __init__(self, source: str) -> None:
        Exception.__init__(self, f"quota state unavailable from {source} and the guard fails closed")
        self.scope, self.principal, self.window, self.kind = "unknown", "", "", ""
        self.usage = self.limit = self.reserved = None
        self.severity = "critical"


class UnattributedCallError(QuotaExceededError):
    """`unattributed: reject` and the call has no user: no one could be charged for it."""

    def __init__(self) -> None:
        Exception.__init__(self, "call refused: no user is attributed to it and `unattributed: reject` is set "
                                 "(wrap it in usage_context(user_id=...) or map a trusted request header)")
        self.scope, self.principal, self.window, self.kind = vocabulary.UNATTRIBUTED_CALLS, "", "", ""
        self.usage = self.limit = self.reserved = None
        self.severity = "critical"

    @property
    def quota(self) -> str:
        """`unattributed`, as this error's `.quota` always read."""
        return vocabulary.UNATTRIBUTED_CALLS


@dataclass(frozen=True)
class Decision:
    """What the guard does with one call other than let it through. `scope` is the scope that decided
    (user, department, or `unattributed`), empty when the guard could not decide (fail_open/fail_closed)."""

    action: str  # one of vocabulary.ACTIONS
    scope: str = ""
    principal: str = ""
    entry: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None  # the model to call instead, for downgrade
    endpoint: Endpoint | None = None  # the server to send it to instead (a downgrade's target elsewhere)

    @property
    def window(self) -> str:
        """The window whose limit decided: the alert's or the refusal's, else the scope's own."""
        window = self.entry.get("window")
        if isinstance(window, str) and window:
            return window
        scope = vocabulary.BY_NAME.get(self.scope)
        return scope.window if scope is not None else ""

    def error(self) -> QuotaExceededError:
        e = self.entry
        if self.action == vocabulary.FAIL_CLOSED:
            return QuotaStateUnavailableError(str(e.get("source", "")))
        if self.scope == vocabulary.UNATTRIBUTED_CALLS:
            return UnattributedCallError()
        retry = e.get("retry_after")
        error = RateLimitExceededError if self.window in RATE_WINDOWS else QuotaExceededError
        return error(self.scope, self.principal, self.window, str(e.get("quota", "")), e.get("usage"), e.get("limit"),
                     str(e.get("severity", "")), e.get("reserved"),
                     max(0.0, float(retry)) if isinstance(retry, (int, float)) else None)
