"""What one window of a call reserves and, once settled, counts: the budget windows the call's tokens and cost;
the sliding minute its tokens and one request (the second column of its hash); the calls in flight one slot,
given back at the end."""

from __future__ import annotations

from otel_tokens.quota.budget.plans import Plan
from otel_tokens.quota.budget.store import NANO, Charge
from otel_tokens.quota.calendar import CONCURRENT, MINUTE
from otel_tokens.quota.file import Limits
from otel_tokens.quota.vocabulary import QuotaScope


def window_charge(scope: QuotaScope, principal: str, window: str, lim: Limits, plan: Plan, bound: int, cost: int,
                  downgradable_model: str | None) -> Charge:
    """The charge of one window: `bound` tokens and `cost` nano-units at worst, checked against `lim` as `plan`
    says. The minute and the calls in flight refuse at their limit whatever the rules say: they protect a
    shared GPU, not a budget (a rule's warning level or a scope with only a downgrade rule would loosen them,
    and no cheaper model makes a request or a slot fewer)."""
    tokens = None if lim.tokens is None else int(lim.tokens)
    requests = None if lim.requests is None else int(lim.requests)
    if window == MINUTE:
        return Charge(scope, principal, bound, 1, tokens, requests, 1.0, None, window)
    if window == CONCURRENT:
        return Charge(scope, principal, 1, 0, requests, None, 1.0, None, window)
    downgrade = plan.downgrade_for(downgradable_model)
    return Charge(scope, principal, bound, cost, tokens, None if lim.cost is None else round(lim.cost * NANO),
                  plan.refuse, downgrade[0] if downgrade else None, window)


def settled_amounts(window: str, tokens: int, cost_nano: int, sent: bool) -> tuple[int, int]:
    """What a finished call counts in one window: the minute its tokens and one request (a request the server
    answered with an error counts too: it reached the GPU), the calls in flight nothing (the slot is released),
    the others tokens and cost."""
    if window == CONCURRENT:
        return 0, 0
    if window == MINUTE:
        return tokens, 1 if sent else 0
    return tokens, cost_nano
