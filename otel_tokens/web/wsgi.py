"""WSGI middleware: `app.wsgi_app = UsageContextWSGIMiddleware(app.wsgi_app)` (Flask), or around any WSGI app."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from otel_tokens import names
from otel_tokens.attribution.context import usage_context
from otel_tokens.quota.decision import QuotaExceededError
from otel_tokens.web.headers import Identify, TrustedHeaders, identified, resolve
from otel_tokens.web.headers import read_headers as _read
from otel_tokens.web.ratelimit_headers import current_headers
from otel_tokens.web.refusal import refusal_response


class UsageContextWSGIMiddleware:
    """The WSGI twin of UsageContextMiddleware. A streamed body is produced while the server iterates
    it, after the app returned, so the attribution is entered around every step of the iteration too."""

    def __init__(self, app: Any, identify: Identify | None = None, headers: Mapping[str, str] | None = None,
                 proxies: Sequence[str] | None = None, rate_limit_headers: bool = False) -> None:
        self.app = app
        self._identify = identify
        self._headers = resolve(headers, identify, "UsageContextWSGIMiddleware", proxies)
        self._rate_limit_headers = rate_limit_headers  # RateLimit-Policy / RateLimit for the request's user

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        values = environ_values(environ, self._headers, self._identify)
        respond = start_response
        if self._rate_limit_headers and names.USER_ID in values:  # the user's own standing only
            def respond(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                with usage_context.of(values):
                    extra = current_headers()
                return start_response(status, [*headers, *extra], exc_info)
        try:
            return call_in_context(values, self.app, environ, respond)
        except QuotaExceededError as error:  # let through by the app before its body: 429, not 500
            status, headers, body = refusal_response(error)
            respond(f"{status.value} {status.phrase}", headers, sys.exc_info())
            return [body]


def environ_values(environ: Any, headers: TrustedHeaders | None, identify: Identify | None = None) -> dict[str, str]:
    if not isinstance(environ, Mapping):
        return {}
    values = {}
    if headers is not None and headers.trusts(str(environ.get("REMOTE_ADDR") or "")):
        values = _read(lambda: headers.from_environ(environ))
    if identify is not None:
        values.update(identified(identify, environ))
    return values


def call_in_context(values: Mapping[str, str], app: Any, *args: Any, **kwargs: Any) -> Any:
    if not values:
        return app(*args, **kwargs)
    context = usage_context.of(values)
    with context:
        body = app(*args, **kwargs)
    environ = args[0] if args else kwargs.get("environ")
    wrapper = environ.get("wsgi.file_wrapper") if isinstance(environ, Mapping) else None
    if isinstance(body, (list, tuple)) or (isinstance(wrapper, type) and isinstance(body, wrapper)):
        return body  # made already (or a file the server may sendfile): nothing left to attribute
    return _InContext(body, context)


class _InContext:
    """The app's body iterable, each step (and close) run inside the request's attribution."""

    def __init__(self, body: Iterable[bytes], context: usage_context) -> None:
        self._body = body
        self._context = context
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> _InContext:
        return self

    def __next__(self) -> bytes:
        with self._context:
            if self._iterator is None:
                self._iterator = iter(self._body)
            return next(self._iterator)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            with self._context:
                close()
