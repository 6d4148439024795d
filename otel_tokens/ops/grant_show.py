"""What `quota list` and `quota show` print, and the usage a reset grants back: read from the budget store (the
book budget mode refuses from), each window as the store holds it now."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from otel_tokens.ops.grant_desk import GrantDesk, GrantError, principal_id
from otel_tokens.quota.budget.store import NANO
from otel_tokens.quota.calendar import CONCURRENT, MINUTE, load_zone
from otel_tokens.quota.file import Quotas
from otel_tokens.quota.grants.model import apply
from otel_tokens.quota.vocabulary import BY_NAME, KINDS


def usage_of(quotas: Quotas, store: Any, scope: str, principal: str, windows: list[str]
             ) -> dict[str, dict[str, float]]:
    """window -> kind -> usage now, for each window with a limit; GrantError without a store to read."""
    if store is None:
        raise GrantError("a reset grants back the window's usage: give --store or OTEL_TOKENS_BUDGET_STORE to read it")
    quota_scope = BY_NAME[scope]
    store.set_zone(quotas.timezone)
    reads = store.peek_many([(quota_scope, principal, window) for window in windows])
    out = {}
    for window, (tokens, cost) in zip(windows, reads, strict=True):
        limits = quotas.limits(quota_scope, window).of(principal)
        used = {"tokens": float(tokens), "cost": cost / NANO}
        out[window] = {k: used[k] for k in KINDS if limits.get(k) is not None}
    return out


def listing(desk: GrantDesk, scope: str | None, principal: str | None, every: bool) -> str:
    now, zone = time.time(), load_zone(desk.quotas.timezone)
    rows = []
    for grant in desk.file.load():
        state = grant.state(now)
        if scope is not None and (grant.scope != scope or grant.principal != principal_id(scope, principal or "")):
            continue
        if not every and state not in ("pending", "active", "scheduled"):
            continue
        amounts = " ".join(f"{grant.amount(k):g} {k}" for k in KINDS if grant.amount(k))
        until = datetime.fromtimestamp(grant.until, zone).isoformat(timespec="minutes")
        rows.append(f"{grant.id}  {state:9}  {grant.scope}:{grant.principal}  {grant.window:5}  {amounts:>16}  "
                    f"until {until}  {grant.kind}  by {grant.requested_by}"
                    + (f", approved by {grant.approved_by}" if grant.approved_by else "") + f"  ({grant.reason})")
    return "\n".join(rows) or "no grants"


def show(desk: GrantDesk, store: Any, scope: str, principal: str) -> str:
    """Per window: usage (from the store, when given), the file's limit, the grants in force, the limit in force
    and what remains."""
    now, quotas = time.time(), desk.quotas
    grants = [g for g in desk.file.load() if g.scope == scope and g.principal == principal]
    in_force, _ = apply(quotas, grants, now)
    quota_scope = BY_NAME[scope]
    windows = [w for w in quotas.scope_windows(quota_scope, rates=True) if w not in (MINUTE, CONCURRENT)
               and quotas.limits(quota_scope, w).of(principal).kinds()]
    used: Mapping[str, Mapping[str, float]] = usage_of(quotas, store, scope, principal, windows) if store else {}
    lines = [f"{scope} {principal!r} ({quotas.timezone})"]
    for window in windows:
        base = quotas.limits(quota_scope, window).of(principal)
        limit = in_force.limits(quota_scope, window).of(principal)
        for kind in KINDS:
            if base.get(kind) is None:
                continue
            total = limit.get(kind) or 0.0
            usage = used.get(window, {}).get(kind)
            granted = total - (base.get(kind) or 0.0)
            stands = (f", used {usage:g}, remaining {max(0.0, total - usage):g}" if usage is not None
                      else " (give --store for usage)")
            lines.append(f"  {window:5} {kind:6} limit {base.get(kind):g}"
                         + (f" + {granted:g} granted" if granted else "") + stands)
    for grant in grants:
        state = grant.state(now)
        if state in ("pending", "active", "scheduled"):
            lines.append(f"  {grant.id} {state} {grant.window} +"
                         + " ".join(f"{grant.amount(k):g} {k}" for k in KINDS if grant.amount(k)))
    return "\n".join(lines)
