"""Zero code: a Starlette or FastAPI app whose handler lets a refused LLM call through answers 429 with
Retry-After, not 500. Under `opentelemetry-instrument` the OpenTelemetry middleware sits outside Starlette's
error middleware, which has already answered 500 by the time an error reaches it; so the refusal gets a
default exception handler of the app's own (`exception_handlers.setdefault`: one the app registered for
QuotaExceededError wins), added where the app builds its middleware stack."""

from __future__ import annotations

from typing import Any

import wrapt

from otel_tokens.logs import internal_error
from otel_tokens.quota.decision import QuotaExceededError
from otel_tokens.web.refusal import refusal_response

_ON = [False]
_HOOKED = [False]
TARGETS = (("starlette.applications", "Starlette.build_middleware_stack"),
           ("fastapi.applications", "FastAPI.build_middleware_stack"))


def instrument() -> None:
    _ON[0] = True
    if _HOOKED[0]:
        return
    _HOOKED[0] = True
    for module_name, attribute in TARGETS:
        wrapt.register_post_import_hook(
            lambda module, attribute=attribute: wrapt.wrap_function_wrapper(module, attribute, _build), module_name)


def uninstrument() -> None:
    _ON[0] = False


def _build(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _ON[0]:
        try:
            instance.exception_handlers.setdefault(QuotaExceededError, _answer)
        except Exception:
            internal_error("starlette refusal handler")
    return wrapped(*args, **kwargs)


async def _answer(request: Any, error: Exception) -> Any:
    from starlette.responses import Response

    if not _ON[0] or not isinstance(error, QuotaExceededError) or request.scope.get("type") != "http":
        raise error  # uninstrumented since the app was built, or a websocket: as if no handler were here
    status, headers, body = refusal_response(error)
    kept = {k: v for k, v in headers if k not in ("content-length", "content-type")}
    return Response(body, status_code=status.value, headers=kept, media_type="application/json")
