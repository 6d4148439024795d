"""Carry the attribution into threads started inside a usage_context.

Python threads start with an empty context, so `Thread(target=model.generate, ...)` (the HF
TextIteratorStreamer pattern) would lose the user. A thread inherits the attribution of the
code that started it; a ThreadPoolExecutor task runs with the attribution of the code that
submitted it (workers are reused, so the starter's value must not stick to later tasks).
Only our contextvar travels, not the whole context.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import wrapt
from opentelemetry.instrumentation.utils import unwrap

from .attribution import _attach_values, _captured, _detach


def _start(wrapped: Any, instance: threading.Thread, args: Any, kwargs: Any) -> Any:
    try:
        values = _captured()
        if values:
            # Per instance, so subclasses that override run() are covered too.
            run = instance.run

            def run_with_starter_attribution() -> None:
                token = _attach_values(values)
                try:
                    run()
                finally:
                    _detach(token)

            instance.run = run_with_starter_attribution  # type: ignore[method-assign]
    except Exception:
        pass
    return wrapped(*args, **kwargs)


def _submit(wrapped: Any, instance: ThreadPoolExecutor, args: Any, kwargs: Any) -> Any:
    values = _captured()
    if not args:
        return wrapped(*args, **kwargs)
    fn = args[0]

    def run_with_submitter_attribution(*a: Any, **kw: Any) -> Any:
        token = _attach_values(values)
        try:
            return fn(*a, **kw)
        finally:
            _detach(token)

    return wrapped(run_with_submitter_attribution, *args[1:], **kwargs)


def instrument_threads() -> None:
    wrapt.wrap_function_wrapper(threading.Thread, "start", _start)
    wrapt.wrap_function_wrapper(ThreadPoolExecutor, "submit", _submit)


def uninstrument_threads() -> None:
    unwrap(threading.Thread, "start")
    unwrap(ThreadPoolExecutor, "submit")
