"""What the guard decided about one call, and the errors a refused call raises (HTTP 429)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from otel_tokens.quota import vocabulary as quota_scopes


class QuotaExceededError(Exception):
    """An instrumented call refused because its user or department is over quota (HTTP 429).
    In budget mode `reserved` is what this call would have taken: usage + reserved > limit."""

    http_status = 429

    def __init__(self, kind: str, principal: str, window: str, quota: str, usage: str | None, limit: str | None,
                 severity: str, reserved: str | None = None) -> None:
        self.kind, self.principal, self.window, self.quota = kind, principal, window, quota
        self.usage, self.limit, self.severity, self.reserved = usage, limit, severity, reserved
        if reserved is not None:
            super().__init__(f"{kind} {principal!r} would go over the {window} {quota} quota: {usage} used, "
                             f"{reserved} reserved for this call, limit {limit}")
            return
        detail = f" ({usage} of {limit})" if usage and limit else ""
        super().__init__(f"{kind} {principal!r} is over the {window} {quota} quota{detail}")


class QuotaStateUnavailableError(QuotaExceededError):
    """fail_closed and the quota state could not be read."""

    def __init__(self, source: str) -> None:
        Exception.__init__(self, f"quota state unavailable from {source} and the guard fails closed")
        self.kind, self.principal, self.window, self.quota = "unknown", "", "", ""
        self.usage = self.limit = self.reserved = None
        self.severity = "critical"


class UnattributedCallError(QuotaExceededError):
    """`unattributed: reject` and the call has no user: no one could be charged for it."""

    def __init__(self) -> None:
        Exception.__init__(self, "call refused: no user is attributed to it and `unattributed: reject` is set "
                                 "(wrap it in usage_context(user_id=...) or map a trusted request header)")
        self.kind, self.principal, self.window, self.quota = "user", "", "", quota_scopes.UNATTRIBUTED_CALLS
        self.usage = self.limit = self.reserved = None
        self.severity = "critical"


@dataclass(frozen=True)
class Decision:
    action: str  # one of quota_scopes.ACTIONS
    kind: str = ""
    principal: str = ""
    entry: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None  # the model to call instead, for downgrade

    def error(self) -> QuotaExceededError:
        e = self.entry
        if self.action == quota_scopes.FAIL_CLOSED:
            return QuotaStateUnavailableError(str(e.get("source", "")))
        if self.kind == quota_scopes.UNATTRIBUTED_CALLS:
            return UnattributedCallError()
        return QuotaExceededError(self.kind, self.principal, str(e.get("window", "")), str(e.get("quota", "")),
                                  e.get("usage"), e.get("limit"), str(e.get("severity", "")), e.get("reserved"))
