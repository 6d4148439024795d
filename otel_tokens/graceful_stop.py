"""A graceful stop exports what was counted: on SIGTERM or SIGINT our metrics and spans are flushed
(bounded), then the signal goes on to whatever handled it before: the app's handler, or the default.

The SDK flushes at exit (atexit), but a SIGTERM with the default action ends the process without
running atexit, and uvicorn, after its own graceful shutdown, restores the handler it found and
raises the signal again: with ours installed first (`opentelemetry-instrument` loads us before the
app), that is the moment ours runs. Servers that exit normally on SIGTERM (gunicorn workers) still
flush at exit. The flush runs in a thread and is waited for at most FLUSH_TIMEOUT_S, so a signal
that arrives while the main thread holds one of our locks cannot deadlock.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from .safety import internal_error, log_once

FLUSH_TIMEOUT_S = 5.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_flushers: list[Callable[[int], Any]] = []  # each takes a timeout in milliseconds
_previous: dict[int, Any] = {}


def flush(timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
    """Flush every registered provider within `timeout_s`; whether it finished in time."""
    def run() -> None:
        for flusher in list(_flushers):
            try:
                flusher(int(timeout_s * 1000))
            except Exception:
                internal_error("flush on stop")

    worker = threading.Thread(target=run, name="otel-tokens-stop-flush", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return not worker.is_alive()


def _on_signal(signum: int, frame: Any) -> None:
    previous = _previous.get(signum, signal.SIG_DFL)
    if previous is not signal.default_int_handler:  # KeyboardInterrupt exits normally: atexit flushes
        if not flush():
            log_once("stop-flush-slow", "otel-tokens: telemetry flush on signal %d took over %.0f s; going on",
                     signum, FLUSH_TIMEOUT_S)
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    signal.signal(signum, signal.SIG_DFL)  # the default action, as if we had never been here
    signal.raise_signal(signum)


def install(*providers: Any) -> None:
    """Flush these providers (an SDK MeterProvider, TracerProvider: anything with force_flush) on a
    stop signal. Only the main thread can set handlers; elsewhere this does nothing (logged once)."""
    for provider in providers:
        flusher = getattr(provider, "force_flush", None)
        if callable(flusher) and flusher not in _flushers:
            _flushers.append(flusher)
    _hook_servers()
    if threading.current_thread() is not threading.main_thread():
        log_once("stop-not-main", "otel-tokens: instrumented outside the main thread; a SIGTERM may lose the "
                 "usage counted since the last export")
        return
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if current is _on_signal:
            continue
        try:
            signal.signal(signum, _on_signal)
        except (ValueError, OSError):
            continue
        _previous[signum] = current


def _after_worker_signals(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """gunicorn workers set their own handlers after the fork (UvicornWorker sets the default ones, and
    uvicorn re-raises SIGTERM with them after its graceful shutdown): put ours in front again."""
    result = wrapped(*args, **kwargs)
    try:
        install()
    except Exception:
        internal_error("stop signal handlers in a gunicorn worker")
    return result


def _hook_servers() -> None:
    if _HOOKED[0]:
        return
    _HOOKED[0] = True
    import wrapt

    for module_name, method in (("gunicorn.workers.base", "Worker.init_signals"),
                                ("uvicorn.workers", "UvicornWorker.init_signals")):  # it overrides, no super()
        wrapt.register_post_import_hook(
            lambda module, method=method: wrapt.wrap_function_wrapper(module, method, _after_worker_signals),
            module_name)


_HOOKED = [False]


def uninstall() -> None:
    """Put back the handlers we found (if ours is still the one installed)."""
    for signum, previous in list(_previous.items()):
        if signal.getsignal(signum) is _on_signal and threading.current_thread() is threading.main_thread():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        _previous.pop(signum, None)
    _flushers.clear()
