"""A call the guard moved to another server (a downgrade to the local model server): the same SDK method, run on
a resource of a client of that server; and that server's key, for litellm too.

The client is a new one, never a copy of the caller's: the caller's key, organization, project and default
headers (which may carry credentials) stay with the caller's server. It keeps the caller's timeout and retries.
The caller's own client is not changed, and a failure there is the caller's error (no retry on the paid one).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

from otel_tokens.config.settings import Endpoint

_MAX_CLIENTS = 64  # (endpoint, key, timeout, retries, sync/async) combinations kept; more are rebuilt per call
_clients: dict[tuple[Any, ...], Any] = {}
_lock = threading.Lock()


def api_key(endpoint: Endpoint) -> str:
    """The key for that server, read when a call is moved: its variable's value, else "EMPTY" (what vLLM and
    Xinference accept). Never the caller's key."""
    return (os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None) or "EMPTY"


def _client(original: Any, endpoint: Endpoint, is_async: bool) -> Any:
    import openai

    key = api_key(endpoint)
    timeout, retries = getattr(original, "timeout", None), getattr(original, "max_retries", None)
    cache_key = (is_async, endpoint, key, repr(timeout), retries)
    found = _clients.get(cache_key)
    if found is not None:
        return found
    options: dict[str, Any] = {"base_url": endpoint.base_url, "api_key": key}
    if timeout is not None:
        options["timeout"] = timeout
    if isinstance(retries, int):
        options["max_retries"] = retries
    client = (openai.AsyncOpenAI if is_async else openai.OpenAI)(**options)
    with _lock:
        if len(_clients) < _MAX_CLIENTS:
            _clients.setdefault(cache_key, client)
    return client


def moved(wrapped: Any, instance: Any, endpoint: Endpoint, is_async: bool) -> Callable[..., Any]:
    """`wrapped` (the SDK method bound to the caller's resource) bound instead to the same resource of a client
    of `endpoint`. Raises when the method cannot be rebound (the caller's wrapper logs it)."""
    function = getattr(wrapped, "__func__", None)
    original = getattr(instance, "_client", None)
    if function is None or original is None:
        raise TypeError(f"cannot move {wrapped!r} to another server")
    resource = type(instance)(_client(original, endpoint, is_async))
    return functools.partial(function, resource)
