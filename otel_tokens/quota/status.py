"""Where a principal stands: per window, used, limit, remaining and when the window resets, so that an app
can warn its users before they are refused (a front end's notice at 80 %). Read from budget mode's store,
the same book that refuses calls, in one round trip; calls in flight count at their worst case there."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from otel_tokens import names
from otel_tokens.quota.budget.mode import UNATTRIBUTED, BudgetMode
from otel_tokens.quota.budget.store import NANO, StoreUnavailableError
from otel_tokens.quota.calendar import MINUTE, RATE_WINDOWS, ROLLING, load_zone, window_end
from otel_tokens.quota.vocabulary import COST, REQUESTS, SCOPES


@dataclass(frozen=True, slots=True)
class WindowStatus:
    scope: str  # user, department, app
    principal: str
    window: str  # minute, concurrent, 24h, day, week, month, year
    kind: str  # tokens, cost, requests (the minute's requests; the calls in flight under `concurrent`)
    used: float  # tokens, or cost in `currency`
    limit: float
    resets_at: datetime | None  # a calendar window's end, in the quota file's zone; None: a sliding window
    currency: str | None = None  # cost windows only

    @property
    def remaining(self) -> float:
        return max(0.0, self.limit - self.used)

    @property
    def ratio(self) -> float:
        return self.used / self.limit


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    windows: tuple[WindowStatus, ...] = ()  # every window with a limit for the call's user, department and app
    available: bool = False  # False: no budget mode in this process, or its store did not answer in time
    warning_ratio: float = 0.8  # the quota file's: where its alerts warn

    def nearest(self) -> WindowStatus | None:
        """The window closest to its limit (highest ratio), or None."""
        return max(self.windows, key=lambda w: w.ratio, default=None)

    @property
    def warning(self) -> bool:
        """Some window is at or past the quota file's warning ratio."""
        return any(w.ratio >= self.warning_ratio for w in self.windows)


def budget_status(budget: BudgetMode, attribution: Mapping[str, str]) -> QuotaStatus:
    quotas = budget.quotas
    if quotas is None:
        return QuotaStatus()
    accounts = []
    for scope in SCOPES:
        principal = attribution.get(scope.attribute) or UNATTRIBUTED
        for window in budget.charged_windows[scope.name]:
            limits = quotas.limits(scope, window).of(principal)
            if limits.kinds():
                accounts.append((scope, principal, window, limits))
    try:
        reads = budget.store.peek_many([(scope, principal, window) for scope, principal, window, _ in accounts])
    except StoreUnavailableError:
        return QuotaStatus(warning_ratio=quotas.warning_ratio)
    now, zone = time.time(), quotas.timezone
    out = []
    for (scope, principal, window, limits), (tokens, cost) in zip(accounts, reads, strict=True):
        resets = (None if window in (ROLLING, *RATE_WINDOWS) else
                  datetime.fromtimestamp(window_end(window, now, zone), load_zone(zone)))
        for kind in limits.kinds():
            limit = limits.get(kind)
            assert limit is not None
            # the minute's requests are its second column; the calls in flight its first
            used = (cost / NANO if kind == COST else float(cost) if (kind == REQUESTS and window == MINUTE)
                    else float(tokens))
            out.append(WindowStatus(scope.name, principal, window, kind, used, limit, resets,
                                    budget.prices.currency if kind == COST else None))
    return QuotaStatus(tuple(out), True, quotas.warning_ratio)


def principals(user_id: str | None, department: str | None, app: str | None = None,
               own_app: str = names.UNATTRIBUTED) -> Mapping[str, str]:
    """The call's user, department and app as a call made here would be charged: the arguments (made safe as
    usage_context makes them), else the usage_context in force (the app: this process's), else
    `__unattributed__`."""
    from otel_tokens.attribution.context import current_attribution, safe_value, with_principals
    from otel_tokens.text import valid_text

    values = {**current_attribution(), names.SERVICE_NAME: own_app}
    for key, value in ((names.USER_ID, user_id), (names.DEPARTMENT, department)):
        if value is not None and value != "":
            values[key] = safe_value(str(value))
    if app:  # spelled as budget mode charges it: the service_name label's spelling
        values[names.SERVICE_NAME] = valid_text(str(app))
    return with_principals(values)
