"""What one window of a call is checked against. Its amount is the store's to derive from the window's kind: a
budget window the call's tokens and cost, the sliding minute its tokens and one request (the second column), the
calls in flight one slot, given back at the end."""

from __future__ import annotations

from otel_tokens.quota import vocabulary
from otel_tokens.quota.budget.plans import Plan
from otel_tokens.quota.budget.store import NANO, Charge
from otel_tokens.quota.calendar import CONCURRENT, MINUTE
from otel_tokens.quota.file import Limits, Quotas
from otel_tokens.quota.vocabulary import QuotaScope


def window_charge(scope: QuotaScope, principal: str, window: str, lim: Limits, plan: Plan,
                  downgradable_model: str | None) -> Charge:
    """One window checked against `lim` as `plan` says (the amounts come with each reservation). The minute and the
    calls in flight refuse at their limit whatever the rules say: they protect a shared GPU, not a budget (a rule's
    warning level or a scope with only a downgrade rule would loosen them, and no cheaper model makes a request or
    a slot fewer)."""
    tokens = None if lim.tokens is None else int(lim.tokens)
    requests = None if lim.requests is None else int(lim.requests)
    if window == MINUTE:
        return Charge(scope, principal, 0, 0, tokens, requests, 1.0, None, window)
    if window == CONCURRENT:
        return Charge(scope, principal, 0, 0, requests, None, 1.0, None, window)
    downgrade = plan.downgrade_for(downgradable_model)
    return Charge(scope, principal, 0, 0, tokens, None if lim.cost is None else round(lim.cost * NANO),
                  plan.refuse, downgrade[0] if downgrade else None, window)


def account_charges(quotas: Quotas, windows: dict[str, tuple[str, ...]], plans: dict[str, Plan],
                    principals: tuple[str, ...], downgradable_model: str | None) -> tuple[tuple[Charge, ...], bool]:
    """The charges of a call of these principals (one per scope, `vocabulary.SCOPES` order) in each scope's
    `windows`, and whether any window limits cost (its worst case must then be priced)."""
    charges = tuple(window_charge(scope, principal, window, quotas.limits(scope, window).of(principal),
                                  plans[scope.name], downgradable_model)
                    for scope, principal in zip(vocabulary.SCOPES, principals, strict=True)
                    for window in windows[scope.name])
    return charges, any(c.cost_limit is not None and c.window not in (MINUTE, CONCURRENT) for c in charges)
