"""What goes in and out of the budget store: a call's charges per principal and window, the store's verdict, the
settlements of finished calls, and the keys a principal's window lives under."""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from otel_tokens.quota.vocabulary import QuotaScope

PREFIX = "otel-tokens:"


@dataclass(frozen=True, slots=True)
class Charge:
    """One window of one principal in a reservation, with the limits it is checked against. A principal's windows
    are consecutive in a call's charges and share its amounts (the first window's `tokens` and `cost`, unless the
    reservation passes the call's own): a budget window counts the tokens and cost, the minute the tokens and one
    request, the calls in flight one slot."""

    scope: QuotaScope
    principal: str
    tokens: int
    cost: int  # nano-units
    token_limit: int | None = None  # the minute: tokens; the calls in flight: slots
    cost_limit: int | None = None  # nano-units; the minute: requests
    refuse: float | None = 1.0  # refused when usage + this call would exceed limit x refuse
    downgrade: float | None = None  # asked to downgrade when it would exceed limit x downgrade
    window: str = ""  # calendar.WINDOWS; '' = the scope's own (24h, month)


@dataclass(frozen=True, slots=True)
class Verdict:
    status: int  # RESERVED, REFUSED, DOWNGRADE
    charge: Charge | None = None  # the window that would cross
    quota: str = ""  # tokens | cost
    used: int = 0
    amount: int = 0
    limit: int = 0
    retry_after: float | None = None  # REFUSED: seconds until it fits in every sliding window that refuses it
    never: bool = False  # REFUSED, and the call alone is over a sliding window's limit: no retry helps
    calendar: tuple[Charge, ...] = ()  # REFUSED by these calendar windows too (the client knows their local end)


@dataclass(frozen=True, slots=True)
class Settlement:
    """A finished call in every window it was charged in: release what it held, count its true usage."""

    charges: Sequence[Charge]  # the reservation's charges (their windows; amounts and limits are not read)
    reservation: str  # the call's reservation id: what makes a settlement sent twice count once
    tokens: int
    cost: int  # nano-units
    held: bool = True  # False: the call was let through (the store failed): counted once, nothing released
    sent: bool = True  # False: the call never left: the minute counts no request


RESERVED, REFUSED, DOWNGRADE = 0, 1, 2


def redact(url: str) -> str:
    """The store URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def principal_keys(scope: QuotaScope, principal: str) -> tuple[str, str]:
    """(usage hash, marks zset) of one principal, every window in them: one hash tag of ours per principal (one
    Cluster slot), whatever the id holds. The keys of the versions before windows (`{u:<digest>}`)."""
    digest = hashlib.sha256(principal.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    base = f"{PREFIX}{{{scope.name[0]}:{digest}}}"
    return base, f"{base}:marks"


def window_prefix(scope: QuotaScope, window: str) -> str:
    """Where a window's fields live in its principal's hash: the scope's own window unprefixed (as in every
    layout), any other under its name (`day.lo`); layout 2 kept it in a key of its own, `<usage>:day`."""
    return "" if not window or window == scope.window else f"{window}."
