"""Who caused a call: `usage_context` on contextvars; OTel Baggage only where the operator trusts it.

A contextvar (not a thread-local) so the value follows asyncio tasks and generators; threads
started inside a context get it through `threads.py`. Inbound baggage is whatever an HTTP client
chose to send, so it counts only with `trust_baggage` (an internal hop: a model server behind the
app), and then only for the keys the app's own `usage_context` leaves unset. Values are made
valid UTF-8 (a lone surrogate would break every export of the process).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any, TypeVar

from opentelemetry import baggage

from otel_tokens import names
from otel_tokens.attribution.directory import INSTALLED
from otel_tokens.text import safe_value

_EMPTY: Mapping[str, str] = {}
_CURRENT: ContextVar[Mapping[str, str]] = ContextVar("otel_tokens_attribution", default=_EMPTY)
_TRUST_BAGGAGE = [False]  # set by the instrumentor from `trust_baggage`


def trust_baggage(trusted: bool) -> None:
    _TRUST_BAGGAGE[0] = trusted


def with_principals(values: Mapping[str, str]) -> Mapping[str, str]:
    """`values` with user.id and department always set: `__unattributed__` for whichever is unknown,
    so a call nobody claimed is charged, alerted on and enforced like any user's."""
    if names.USER_ID in values and names.DEPARTMENT in values:
        return values
    last = _LAST_FILLED[0]
    if last[0] is values:  # the same context as the last call (contexts are never mutated)
        return last[1]
    filled = {**values, **{key: names.UNATTRIBUTED for key in names.PRINCIPAL_KEYS if key not in values}}
    _LAST_FILLED[0] = (values, filled)
    return filled


_LAST_FILLED: list[tuple[Mapping[str, str] | None, Mapping[str, str]]] = [(None, _EMPTY)]

F = TypeVar("F", bound=Callable[..., Any])


def current_attribution() -> Mapping[str, str]:
    """The attribution in force: usage_context keys, completed from trusted Baggage for the keys it lacks, and
    from the directory (before the baggage where the operator gave the directory precedence)."""
    values = _CURRENT.get()
    directory = INSTALLED[0]  # a list read, not a call: this runs on every LLM call
    if not _TRUST_BAGGAGE[0] or (len(values) >= 3 and all(k in values for k in names.BAGGAGE_KEYS)):
        return values if directory is None else directory.complete(values)
    if directory is not None and not directory.request_first:
        values = directory.complete(values)
    try:
        bag = baggage.get_all()
    except Exception:  # a broken context must not break the call
        bag = _EMPTY
    if not bag:
        return values if directory is None else directory.complete(values)
    merged = dict(values)
    for key in names.BAGGAGE_KEYS:
        if key not in merged:
            value = bag.get(key)
            if value is not None and value != "":
                merged[key] = safe_value(str(value))
    return merged if directory is None else directory.complete(merged)


class usage_context:  # noqa: N801 - reads as a function at call sites, like contextlib helpers
    """Attribute every LLM call made inside to a user / department / session.

    Use as `with usage_context(user_id="alice", department="support"):` or as a decorator of a
    sync or async function or (async) generator. Nested contexts inherit the keys they do not set.
    Extra keyword arguments become span attributes under their own names.
    """

    __slots__ = ("_tokens", "_values")

    def __init__(self, user_id: str | None = None, department: str | None = None,
                 session_id: str | None = None, **extra: Any) -> None:
        values: dict[str, str] = {}
        for key, value in ((names.USER_ID, user_id), (names.DEPARTMENT, department),
                           (names.SESSION_ID, session_id), *extra.items()):
            if value is not None and value != "":  # an empty id is no id: the call is unattributed
                values[key] = safe_value(str(value))
        self._values = values
        self._tokens: list[Token[Mapping[str, str]]] = []

    @classmethod
    def of(cls, values: Mapping[str, str]) -> usage_context:
        """A context keyed by attribute names (user.id, department, session.id), as the web middleware reads
        them, values already made safe by it (`safe_value` is not idempotent: escaping twice would split
        one id in two)."""
        context = cls()
        context._values = {key: str(value) for key, value in values.items() if value}
        return context

    def _enter(self) -> Token[Mapping[str, str]]:
        outer = _CURRENT.get()
        return _CURRENT.set({**outer, **self._values} if outer else dict(self._values))

    def __enter__(self) -> usage_context:
        self._tokens.append(self._enter())
        return self

    def __exit__(self, *exc: object) -> None:
        _CURRENT.reset(self._tokens.pop())

    def __call__(self, func: F) -> F:
        if inspect.isasyncgenfunction(func):
            return self._wrap_async_gen(func)  # type: ignore[return-value]
        if inspect.isgeneratorfunction(func):
            return self._wrap_gen(func)  # type: ignore[return-value]
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                token = self._enter()
                try:
                    return await func(*args, **kwargs)
                finally:
                    _CURRENT.reset(token)
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = self._enter()
            try:
                return func(*args, **kwargs)
            finally:
                _CURRENT.reset(token)
        return wrapper  # type: ignore[return-value]

    # A generator runs in its consumer's context between steps, so the context is entered around
    # each step rather than once at creation.
    def _wrap_gen(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            gen = func(*args, **kwargs)
            method: Callable[..., Any] = gen.send
            arg: Any = None
            while True:
                try:
                    item = self._step(method, arg)
                except StopIteration as stop:
                    return stop.value
                try:
                    arg = yield item
                    method = gen.send
                except GeneratorExit:
                    self._step(gen.close)
                    raise
                except BaseException as exc:  # forwarded like `yield from` does
                    method, arg = gen.throw, exc
        return wrapper

    def _wrap_async_gen(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            agen = func(*args, **kwargs)
            method: Callable[..., Any] = agen.asend
            arg: Any = None
            while True:
                token = self._enter()
                try:
                    item = await method(arg)
                except StopAsyncIteration:
                    return
                finally:
                    _CURRENT.reset(token)
                try:
                    arg = yield item
                    method = agen.asend
                except GeneratorExit:
                    token = self._enter()
                    try:
                        await agen.aclose()
                    finally:
                        _CURRENT.reset(token)
                    raise
                except BaseException as exc:
                    method, arg = agen.athrow, exc
        return wrapper

    def _step(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        token = self._enter()
        try:
            return fn(*args, **kwargs)
        finally:
            _CURRENT.reset(token)


def _attach_values(values: Mapping[str, str]) -> Token[Mapping[str, str]]:
    """Set an attribution captured elsewhere (another thread's); used by `threads.py`."""
    return _CURRENT.set(values)


def _detach(token: Token[Mapping[str, str]]) -> None:
    _CURRENT.reset(token)


def _captured() -> Mapping[str, str]:
    return _CURRENT.get()
