"""Where the caller stands, as response headers (off by default): the IETF `RateLimit-Policy` / `RateLimit`
header fields (draft-ietf-httpapi-ratelimit-headers) for the request's own user, so a front end can warn at
the warning ratio without code. Only the user's windows: a department's or an app's numbers are other people's
spending. One pipelined read of the budget store per response (`quota_status`), nothing without budget mode."""

from __future__ import annotations

import math
import time

from otel_tokens.quota.calendar import CONCURRENT, MINUTE, ROLLING
from otel_tokens.quota.status import QuotaStatus

# seconds a window spans, for the policy's `w` (a calendar window: its usual length)
_SPAN = {MINUTE: 60, CONCURRENT: 0, ROLLING: 86400, "day": 86400, "week": 604800, "month": 2592000,
         "year": 31536000}


def ratelimit_headers(status: QuotaStatus) -> list[tuple[str, str]]:
    """`RateLimit-Policy` (every window of the status's user with a limit) and `RateLimit` (the one nearest its
    limit: remaining `r`, seconds to its reset `t`), or nothing when the store did not answer."""
    mine = [w for w in status.windows if w.scope == "user"]
    if not status.available or not mine:
        return []
    policies = []
    for w in mine:
        name = f"{w.window}-{w.kind}"
        span = _SPAN.get(w.window, 0)
        policies.append(f'"{name}";q={math.floor(w.limit)}' + (f";w={span}" if span else ""))
    nearest = max(mine, key=lambda w: w.ratio)
    if nearest.resets_at is not None:
        reset = max(0, math.ceil(nearest.resets_at.timestamp() - time.time()))
    else:
        reset = 1 if nearest.window == CONCURRENT else _SPAN.get(nearest.window, 60)
    current = f'"{nearest.window}-{nearest.kind}";r={math.floor(nearest.remaining)};t={reset}'
    return [("ratelimit-policy", ", ".join(policies)), ("ratelimit", current)]


def current_headers() -> list[tuple[str, str]]:
    """The headers for the user of the usage_context in force (never raises: a header is not worth a 500)."""
    try:
        from otel_tokens import quota_status

        return ratelimit_headers(quota_status())
    except Exception:
        return []
