"""What goes in and out of the budget store: a call's charges per principal and window, the store's verdict, the
settlements of finished calls, and the keys a principal's window lives under."""

from __future__ import annotations

import hashlib
import urllib.parse
from dataclasses import dataclass

from otel_tokens.quota.vocabulary import QuotaScope

PREFIX = "otel-tokens:"


@dataclass(frozen=True, slots=True)
class Charge:
    """One principal's part of a reservation, with the limits it is checked against."""

    scope: QuotaScope
    principal: str
    tokens: int
    cost: int  # nano-units
    token_limit: int | None = None
    cost_limit: int | None = None  # nano-units
    refuse: float | None = 1.0  # refused when usage + this call would exceed limit x refuse
    downgrade: float | None = None  # asked to downgrade when it would exceed limit x downgrade
    window: str = ""  # calendar.WINDOWS; '' = the scope's own (24h, month)


@dataclass(frozen=True, slots=True)
class Verdict:
    status: int  # RESERVED, REFUSED, DOWNGRADE
    held: tuple[str, ...] = ()  # RESERVED: "reservation:bucket" each charge is held in
    charge: Charge | None = None  # the principal that would cross
    quota: str = ""  # tokens | cost
    used: int = 0
    amount: int = 0
    limit: int = 0
    retry_after: float | None = None  # REFUSED: seconds until it fits in every sliding window that refuses it
    never: bool = False  # REFUSED, and the call alone is over a sliding window's limit: no retry helps
    calendar: tuple[Charge, ...] = ()  # REFUSED by these calendar windows too (the client knows their local end)


@dataclass(frozen=True, slots=True)
class Settlement:
    """One principal's part of a finished call: release what it held, count its true usage."""

    scope: QuotaScope
    principal: str
    held: str  # Verdict.held's entry ('' when nothing was held: the call was let through)
    reservation: str  # the call's reservation id: what makes a settlement sent twice count once
    tokens: int
    cost: int  # nano-units
    window: str = ""  # as Charge.window


RESERVED, REFUSED, DOWNGRADE = 0, 1, 2


def redact(url: str) -> str:
    """The store URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def principal_keys(scope: QuotaScope, principal: str, window: str = "") -> tuple[str, str]:
    """(usage hash, marks zset) of one principal's window: one hash tag of ours per principal (every window in
    one Cluster slot), whatever the id holds. The scope's own window keeps the keys of the versions before
    windows (`{u:<digest>}`), the others add theirs (`{u:<digest>}:day`)."""
    digest = hashlib.sha256(principal.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    base = f"{PREFIX}{{{scope.name[0]}:{digest}}}"
    if window and window != scope.window:
        base = f"{base}:{window}"
    return base, f"{base}:marks"
