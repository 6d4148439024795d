"""ASGI middleware: `app.add_middleware(UsageContextMiddleware, headers={"user.id": "X-Forwarded-User"})`. It also
answers a refused LLM call the app did not handle as HTTP 429 with Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from otel_tokens import names
from otel_tokens.attribution.context import usage_context
from otel_tokens.quota.decision import QuotaExceededError
from otel_tokens.web.headers import Identify, TrustedHeaders, identified, resolve
from otel_tokens.web.headers import read_headers as _read
from otel_tokens.web.ratelimit_headers import current_headers
from otel_tokens.web.refusal import refusal_response


class UsageContextMiddleware:
    """Charges the LLM calls made while serving a request to the user the request was authenticated as:
    from `identify(scope)` (your code: a session, a verified token) and/or the trusted headers an
    authenticating proxy set. Your own `usage_context` inside a handler still wins."""

    def __init__(self, app: Any, identify: Identify | None = None, headers: Mapping[str, str] | None = None,
                 proxies: Sequence[str] | None = None, rate_limit_headers: bool = False) -> None:
        self.app = app
        self._identify = identify
        self._headers = resolve(headers, identify, "UsageContextMiddleware", proxies)
        self._rate_limit_headers = rate_limit_headers  # RateLimit-Policy / RateLimit for the request's user

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        values = request_values(scope, self._headers, self._identify)
        if not values:
            await answer_refusals(self.app, scope, receive, send)
            return
        with usage_context.of(values):  # the user's own standing only: never the shared __unattributed__ one
            await answer_refusals(self.app, scope, receive, send,
                                  self._rate_limit_headers and names.USER_ID in values)


async def answer_refusals(app: Any, scope: Any, receive: Any, send: Any, standing: bool = False) -> None:
    """Runs the app; a QuotaExceededError it let through before its response began is answered 429 (with
    Retry-After), not 500. After the response began, the error goes on (the server closes the connection).
    `standing`: the user's RateLimit headers on every response."""
    started = False

    async def watched(message: Any) -> None:
        nonlocal started
        if isinstance(message, Mapping) and message.get("type") == "http.response.start":
            started = True
            if standing:  # a read of the store: off the event loop
                extra = [(k.encode(), v.encode()) for k, v in await _in_thread(current_headers)]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    try:
        await app(scope, receive, watched)
    except QuotaExceededError as error:
        if started or not isinstance(scope, Mapping) or scope.get("type") != "http":
            raise
        status, headers, body = refusal_response(error)
        if standing:
            headers += await _in_thread(current_headers)
        await send({"type": "http.response.start", "status": status.value,
                    "headers": [(k.encode(), v.encode()) for k, v in headers]})
        await send({"type": "http.response.body", "body": body})


async def _in_thread(fn: Any) -> Any:
    """fn() in a worker thread with this context (asyncio), else here (another event loop library)."""
    try:
        return await asyncio.to_thread(fn)
    except RuntimeError:  # no running asyncio loop
        return fn()


def request_values(scope: Any, headers: TrustedHeaders | None, identify: Identify | None = None) -> dict[str, str]:
    if not isinstance(scope, Mapping) or scope.get("type") not in ("http", "websocket"):
        return {}
    values = {}
    if headers is not None:
        client = scope.get("client")
        peer = str(client[0]) if isinstance(client, (list, tuple)) and client else None
        if headers.trusts(peer):
            values = _read(lambda: headers.from_asgi(scope.get("headers") or ()))
    if identify is not None:
        values.update(identified(identify, scope))
    return values
