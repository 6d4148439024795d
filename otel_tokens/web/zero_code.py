"""Zero-code: with `trusted_headers` configured, the request's attribution is set where OpenTelemetry's
own ASGI and WSGI middleware (FastAPI, Starlette, any app `opentelemetry-instrument` wraps with them)
receive the request, before the app sees it. Hooked at import, so the order of instrumentors does
not matter; uninstrumenting turns the hooks into pass-throughs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import wrapt

from otel_tokens.attribution.context import usage_context
from otel_tokens.logs import internal_error
from otel_tokens.web.asgi import request_values
from otel_tokens.web.headers import TrustedHeaders, checked
from otel_tokens.web.wsgi import call_in_context, environ_values

_TRUSTED: list[TrustedHeaders | None] = [None]
_HOOKED = [False]
TARGETS = (("opentelemetry.instrumentation.asgi", "asgi"), ("opentelemetry.instrumentation.wsgi", "wsgi"))


def instrument(mapping: Mapping[str, str], proxies: Sequence[str] = (),
               groups: tuple[str, Mapping[str, str]] | None = None) -> None:
    _TRUSTED[0] = checked(TrustedHeaders(mapping, proxies, groups))
    if _HOOKED[0]:
        return
    _HOOKED[0] = True
    wrapt.register_post_import_hook(
        lambda module: wrapt.wrap_function_wrapper(module, "OpenTelemetryMiddleware.__call__", _asgi_call),
        TARGETS[0][0])
    wrapt.register_post_import_hook(
        lambda module: wrapt.wrap_function_wrapper(module, "OpenTelemetryMiddleware.__call__", _wsgi_call),
        TARGETS[1][0])


def uninstrument() -> None:
    _TRUSTED[0] = None


def _asgi_call(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    trusted = _TRUSTED[0]
    if trusted is None:
        return wrapped(*args, **kwargs)
    try:
        values = request_values(args[0] if args else kwargs.get("scope"), trusted)
    except Exception:
        internal_error("trusted headers")
        values = {}
    if not values:
        return wrapped(*args, **kwargs)
    return _awaited_in_context(values, wrapped, args, kwargs)


async def _awaited_in_context(values: Mapping[str, str], wrapped: Any, args: tuple[Any, ...],
                              kwargs: dict[str, Any]) -> Any:
    with usage_context.of(values):
        return await wrapped(*args, **kwargs)


def _wsgi_call(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    trusted = _TRUSTED[0]
    if trusted is None:
        return wrapped(*args, **kwargs)
    try:
        values = environ_values(args[0] if args else kwargs.get("environ"), trusted)
    except Exception:
        internal_error("trusted headers")
        values = {}
    return call_in_context(values, wrapped, *args, **kwargs)
