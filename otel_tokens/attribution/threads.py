"""Carry the attribution, and the trace, into threads started inside a usage_context or a span.

Python threads start with an empty context, so `Thread(target=model.generate, ...)` (the HF
TextIteratorStreamer pattern) would lose the user and make its `generate` span a root. A thread
inherits the attribution of the code that started it; a ThreadPoolExecutor task runs with the
attribution of the code that submitted it (workers are reused, so the starter's value must not stick
to later tasks). The OpenTelemetry context travels too, but only when a span is active where the
thread starts (a request being served): a background thread started at import time stays a root, and
none is made a child of whatever request happened to start it before. Where
opentelemetry-instrumentation-threading is active it carries the trace itself, so we carry only our
attribution (no double attach).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from importlib.util import find_spec
from typing import Any

import wrapt
from opentelemetry import context, trace
from opentelemetry.instrumentation.utils import unwrap

from otel_tokens.attribution.context import _attach_values, _captured, _detach

_THREADING_PACKAGE = [False]  # opentelemetry-instrumentation-threading installed (checked at instrument time)


def _trace_to_carry(span_needed: bool = True) -> context.Context | None:
    """The current OTel context when nobody else carries it into threads; for a thread, only when a span is
    active (a pool task always gets its submitter's: the worker may hold an older task's)."""
    current = context.get_current()
    if span_needed and not trace.get_current_span(current).get_span_context().is_valid:
        return None
    if _THREADING_PACKAGE[0]:
        from opentelemetry.instrumentation.threading import ThreadingInstrumentor

        if ThreadingInstrumentor().is_instrumented_by_opentelemetry:
            return None
    return current


def _run_with(values: Any, carried: context.Context | None, fn: Any, *args: Any, **kwargs: Any) -> Any:
    token = _attach_values(values) if values is not None else None
    otel_token = context.attach(carried) if carried is not None else None
    try:
        return fn(*args, **kwargs)
    finally:
        if otel_token is not None:
            context.detach(otel_token)
        if token is not None:
            _detach(token)


def _start(wrapped: Any, instance: threading.Thread, args: Any, kwargs: Any) -> Any:
    try:
        values, carried = _captured(), _trace_to_carry()
        if values or carried is not None:
            # Per instance, so subclasses that override run() are covered too.
            run = instance.run

            def run_with_starter_context() -> None:
                _run_with(values or None, carried, run)

            instance.run = run_with_starter_context  # type: ignore[method-assign]
    except Exception:
        pass
    return wrapped(*args, **kwargs)


def _submit(wrapped: Any, instance: ThreadPoolExecutor, args: Any, kwargs: Any) -> Any:
    if not args:
        return wrapped(*args, **kwargs)
    try:
        values, carried = _captured(), _trace_to_carry(span_needed=False)
    except Exception:
        return wrapped(*args, **kwargs)
    fn = args[0]

    def run_with_submitter_context(*a: Any, **kw: Any) -> Any:
        return _run_with(values, carried, fn, *a, **kw)

    return wrapped(run_with_submitter_context, *args[1:], **kwargs)


def instrument_threads() -> None:
    _THREADING_PACKAGE[0] = find_spec("opentelemetry.instrumentation.threading") is not None
    wrapt.wrap_function_wrapper(threading.Thread, "start", _start)
    wrapt.wrap_function_wrapper(ThreadPoolExecutor, "submit", _submit)


def uninstrument_threads() -> None:
    unwrap(threading.Thread, "start")
    unwrap(ThreadPoolExecutor, "submit")
