"""A grant: a temporary increase of one principal's limit in one window, from `start` until `until`. A reset is a
grant of the window's usage until its end, so nothing is deleted and the books still add up. Grants are part of
the limits: `apply` folds the ones in force into the quota file's limits (what budget mode and `quota_status`
check), and the rules render each as a series that stops counting at its `until` on its own."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from otel_tokens.quota.file import Limits, Quotas, ScopeLimits
from otel_tokens.quota.vocabulary import BY_NAME, KINDS, USER, QuotaScope

GRANT, RESET = "grant", "reset"
PENDING, ACTIVE, REVOKED, REJECTED = "pending", "active", "revoked", "rejected"
STATUSES = (PENDING, ACTIVE, REVOKED, REJECTED)
ID = re.compile(r"^g-[0-9a-f]{8,32}$")  # ends up in PromQL label values, file names and URLs


@dataclass(frozen=True)
class Grant:
    id: str
    scope: str  # user | department | app
    principal: str
    window: str
    tokens: float | None
    cost: float | None
    start: float  # unix seconds
    until: float
    reason: str
    requested_by: str
    created: float
    status: str = ACTIVE
    kind: str = GRANT
    approved_by: str | None = None
    approved_at: float | None = None
    pending_until: float | None = None  # an unapproved request lapses then
    revoked_by: str | None = None
    revoked_at: float | None = None

    @property
    def quota_scope(self) -> QuotaScope:
        return BY_NAME[self.scope]

    def amount(self, kind: str) -> float | None:
        return self.tokens if kind == "tokens" else self.cost if kind == "cost" else None

    def state(self, now: float) -> str:
        """What the grant is at `now`: pending, lapsed (never approved in time), scheduled, active, ended, revoked,
        rejected."""
        if self.status == PENDING:
            return "lapsed" if self.pending_until is not None and now >= self.pending_until else PENDING
        if self.status != ACTIVE:
            return self.status
        return "scheduled" if now < self.start else "active" if now < self.until else "ended"

    def in_force(self, now: float) -> bool:
        return self.status == ACTIVE and self.start <= now < self.until

    def counts_after(self, now: float) -> bool:
        """Still to count at some moment from `now` on (what the rules render)."""
        return self.status == ACTIVE and self.until > now

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def apply(quotas: Quotas, grants: Iterable[Grant], now: float) -> tuple[Quotas, float]:
    """The limits in force at `now` (each grant in force added to its principal's limit of its window and kind),
    and when that next changes (a grant starting or ending; inf: never). `quotas` itself when none is in force."""
    added: dict[tuple[str, str, str], dict[str, float]] = {}
    change = float("inf")
    for grant in grants:
        if grant.status != ACTIVE:
            continue
        if grant.start > now:
            change = min(change, grant.start)
        elif now < grant.until:
            change = min(change, grant.until)
            extra = added.setdefault((grant.quota_scope.section, grant.window, grant.principal), {})
            for kind in KINDS:
                amount = grant.amount(kind)
                if amount:
                    extra[kind] = extra.get(kind, 0.0) + amount
    if not added:
        return quotas, change
    windows = {section: dict(by_window) for section, by_window in quotas.windows.items()}
    for (section, window, principal), extra in added.items():
        limits = windows.setdefault(section, {}).get(window, ScopeLimits())
        base = limits.of(principal)
        raised = Limits(**{k: (base.get(k) or 0.0) + extra[k] if k in extra and base.get(k) is not None
                           else base.get(k) for k in ("tokens", "cost", "requests")})
        windows[section][window] = ScopeLimits(limits.default, {**limits.overrides, principal: raised})
    users = windows.get(USER.section, {}).get(USER.window, ScopeLimits())
    departments = windows.get("departments", {}).get("month", ScopeLimits())
    return replace(quotas, users=users, departments=departments, windows=windows), change


def by_principal(grants: Iterable[Grant]) -> Mapping[tuple[str, str], list[Grant]]:
    out: dict[tuple[str, str], list[Grant]] = {}
    for grant in grants:
        out.setdefault((grant.scope, grant.principal), []).append(grant)
    return out
