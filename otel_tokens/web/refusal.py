"""A call the guard refused, answered as HTTP 429 by the web middleware when the app let the error through
(an app's own exception handler runs first and wins). The body names what was reached (scope, window, kind)
and when to come back, never usage numbers: a department's or an app's totals are other people's spending."""

from __future__ import annotations

import json
import math

from otel_tokens.quota.decision import QuotaExceededError, RateLimitExceededError

STATUS = "429 Too Many Requests"


def refusal_response(error: QuotaExceededError) -> tuple[list[tuple[str, str]], bytes]:
    """(headers, body) of the 429 answering `error`: `Retry-After` in whole seconds (rounded up, at least 1)
    when the guard knows when the call would fit."""
    kind = "rate_limited" if isinstance(error, RateLimitExceededError) else "quota_exceeded"
    detail = {"type": kind, "scope": error.scope, "window": error.window, "quota": error.kind}
    headers = [("content-type", "application/json")]
    retry = error.retry_after
    if retry is not None:
        seconds = max(1, math.ceil(retry))
        detail["retry_after"] = seconds
        headers.append(("retry-after", str(seconds)))
    what = f"{error.scope} {error.window} {error.kind}".strip()
    detail["message"] = f"LLM quota reached ({what})" + (f"; retry after {detail['retry_after']} s"
                                                          if "retry_after" in detail else "")
    body = json.dumps({"error": detail}).encode()
    headers.append(("content-length", str(len(body))))
    return headers, body
