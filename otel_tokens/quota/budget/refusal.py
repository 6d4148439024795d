"""What a caller is told when budget mode refuses a call: the window and quota that refused it, the numbers, and
when to retry (the latest over every window that refuses it)."""

from __future__ import annotations

import time

from otel_tokens.quota import vocabulary
from otel_tokens.quota.budget.plans import Plan
from otel_tokens.quota.budget.records import Verdict
from otel_tokens.quota.budget.store import NANO
from otel_tokens.quota.calendar import CALENDAR_WINDOWS, CONCURRENT, MINUTE, window_end
from otel_tokens.quota.decision import Decision
from otel_tokens.quota.file import Quotas


def refusal(quotas: Quotas, plan: Plan, currency: str, verdict: Verdict) -> Decision:
    charge = verdict.charge
    assert charge is not None
    scope = charge.scope
    window = charge.window or scope.window
    # the minute and the calls in flight refuse at their limit whatever the rules (budget.parts)
    rate = window in (MINUTE, CONCURRENT)
    severity = vocabulary.CRITICAL if rate or (plan.refuse or 1.0) >= 1.0 else vocabulary.WARNING
    quota = verdict.quota  # the second column of the minute, and the one of the calls in flight, count calls
    if window == CONCURRENT or (window == MINUTE and quota == vocabulary.COST):
        quota = vocabulary.REQUESTS

    def show(value: int) -> str:
        if quota == vocabulary.COST:
            return f"{value / NANO:,.4f} {currency}"
        return f"{value:,}"

    retry = verdict.retry_after  # every refusing window's: the latest
    now = time.time()
    for refusing in verdict.calendar:
        if (refusing.window or refusing.scope.window) in CALENDAR_WINDOWS:
            end = window_end(refusing.window or refusing.scope.window, now, quotas.timezone) - now
            retry = end if retry is None else max(retry, end)
    if verdict.never:
        retry = None
    entry = {"window": window, "quota": quota, "usage": show(verdict.used), "reserved": show(verdict.amount),
             "limit": show(verdict.limit), "severity": severity, "retry_after": retry}
    return Decision(vocabulary.REJECT, scope.name, charge.principal, entry)
