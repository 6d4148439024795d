"""A call the guard refused, answered by the web middleware when the app let the error through (an app's own
exception handler runs first and wins): 429 with Retry-After for a quota reached, 503 and 403 for the refusals
that are not one. The body names what was reached (scope, window, kind) and when to come back, never usage
numbers: a department's or an app's totals are other people's spending."""

from __future__ import annotations

import json
import math
from http import HTTPStatus

from otel_tokens.quota.decision import (
    QuotaExceededError,
    QuotaStateUnavailableError,
    RateLimitExceededError,
    UnattributedCallError,
)

# not a quota reached: the quota store could not be asked (fail_closed), or nobody could be charged
OTHER = {QuotaStateUnavailableError: (HTTPStatus.SERVICE_UNAVAILABLE, "quota_state_unavailable"),
         UnattributedCallError: (HTTPStatus.FORBIDDEN, "unattributed")}


def refusal_response(error: QuotaExceededError) -> tuple[HTTPStatus, list[tuple[str, str]], bytes]:
    """(status, headers, body) answering `error`: 429 with `Retry-After` in whole seconds (rounded up, at
    least 1) when the guard knows when the call would fit; 503 when the quota store could not be asked
    (fail_closed), 403 for a call nobody could be charged for (`unattributed: reject`)."""
    other = next((found for cls, found in OTHER.items() if isinstance(error, cls)), None)
    if other is not None:
        body = json.dumps({"error": {"type": other[1], "message": str(error)}}).encode()
        return other[0], [("content-type", "application/json"), ("content-length", str(len(body)))], body
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
    return HTTPStatus.TOO_MANY_REQUESTS, headers, body
