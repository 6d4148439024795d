"""Grants in the quota rules. Each grant is a recorded series of its amount that exists only from its start to its
end (`vector(N) and on() (vector(time()) >= start < until)`), so an expiring grant stops counting at its time
without a re-render; a grant that starts later than the render is rendered too. Per principal, window and kind:

    llm_quota:user_tokens:grant{user_id, grant}          one per grant, while in force
    llm_quota:user_tokens:limit_granted{user_id}         sum of those + the principal's override, else default

and the ratio, the `limit` series and the alerts' texts take `limit_granted` first where it exists. The rules hold
only the principals with a grant in force: nothing per evaluation grows with the others.

Which grants are being rendered is set for the duration of one `render` (`rendering`), read where the limits are
written (rules._limit_parts), instead of being passed through every group's builder."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from otel_tokens.quota.calendar import RATE_WINDOWS
from otel_tokens.quota.file import Quotas, ScopeLimits
from otel_tokens.quota.grants.model import Grant
from otel_tokens.quota.vocabulary import BY_NAME, KINDS, QuotaScope

GRANTS: ContextVar[Sequence[Grant]] = ContextVar("otel_tokens_grants", default=())
GRANTED: ContextVar[frozenset[tuple[str, str, str]]] = ContextVar("otel_tokens_granted", default=frozenset())


def prefix(grant: Grant) -> str:
    """The window as recorded names spell it: '' for the scope's own window."""
    return "" if grant.window == grant.quota_scope.window else grant.window


def rendered_grants(quotas: Quotas, grants: Sequence[Grant], now: float) -> list[Grant]:
    """The grants the rules hold: approved, not yet ended at `now`, in a window the rules render, raising a limit
    the file still sets (a grant of a limit since removed from the file would count from nothing)."""
    kept = []
    for grant in grants:
        if not grant.counts_after(now) or grant.window in RATE_WINDOWS:
            continue
        scope = BY_NAME[grant.scope]
        limits = quotas.limits(scope, grant.window).of(grant.principal)
        # only the kinds the file still limits: a grant of a limit since removed would count from nothing
        grant = replace(grant, **{kind: None for kind in KINDS if limits.get(kind) is None})
        if any(grant.amount(kind) for kind in KINDS):
            kept.append(grant)
    return sorted(kept, key=lambda g: (g.scope, g.principal, g.window, g.id))


@contextmanager
def rendering(grants: Sequence[Grant]) -> Iterator[None]:
    keys = frozenset((g.scope, kind, prefix(g)) for g in grants for kind in KINDS if g.amount(kind))
    tokens = GRANTS.set(grants), GRANTED.set(keys)
    try:
        yield
    finally:
        GRANTS.reset(tokens[0])
        GRANTED.reset(tokens[1])


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def grant_rules(scope: QuotaScope, kind: str, limits_of: ScopeLimits, window: str,
                grants: Sequence[Grant]) -> list[dict[str, Any]]:
    """The grants of one scope, kind and window (`window`: '' for the scope's own), then their sum on top of each
    principal's limit. Empty when there is none."""
    from otel_tokens.ops.rules import series

    mine = [g for g in grants if g.scope == scope.name and prefix(g) == window and g.amount(kind)]
    if not mine:
        return []
    label, name = scope.label, series(scope.name, kind, "grant", window)
    rules: list[dict[str, Any]] = [
        {"record": name, "expr": f"vector({_number(g.amount(kind) or 0)}) and on() "
                                 f"(vector(time()) >= {_number(g.start)} < {_number(g.until)})",
         "labels": {label: g.principal, "grant": g.id}} for g in mine]
    granted = f"sum by ({label}) ({name})"
    base = []
    if any(lim.get(kind) is not None for lim in limits_of.overrides.values()):
        base.append(series(scope.name, kind, "limit_override", window))
    if limits_of.default.get(kind) is not None:
        base.append(f"({granted} * 0 + on() group_left() {series(scope.name, kind, 'limit_default', window)})")
    rules.append({"record": series(scope.name, kind, "limit_granted", window),
                  "expr": f"{granted}\n+ on({label})\n(" + f"\nor on({label})\n".join(base) + ")"})
    return rules
