"""A graceful stop exports what was counted: on SIGTERM or SIGINT our metrics and spans are flushed
(bounded), then the signal goes on to whatever handled it before: the app's handler, or the default.

The SDK flushes at exit (atexit), but a SIGTERM with the default action ends the process without
running atexit, and uvicorn, after its own graceful shutdown, restores the handler it found and
raises the signal again: with ours installed first (`opentelemetry-instrument` loads us before the
app), that is the moment ours runs. gunicorn workers (and uvicorn's worker classes) set their own
handlers after the fork, so ours is put in front of those again. The flush runs in a thread and is
waited for at most FLUSH_TIMEOUT_S, once per process: a signal that arrives while the main thread
holds one of our locks cannot deadlock, and a second signal goes straight on.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from otel_tokens.logs import internal_error, log_once

FLUSH_TIMEOUT_S = 5.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_flushers: list[Callable[[int], Any]] = []  # each takes a timeout in milliseconds
_previous: dict[int, Any] = {}
_flushed = threading.Event()  # one flush per process: a second signal is not delayed again
_dispatching: set[int] = set()


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
    if signum in _dispatching or previous is _on_signal:  # a handler above us chained back: no loop
        previous = signal.SIG_DFL
    else:
        _dispatching.add(signum)
    try:
        if previous is not signal.default_int_handler and not _flushed.is_set():  # KeyboardInterrupt: atexit
            _flushed.set()
            try:
                if not flush():
                    log_once("stop-flush-slow", "otel-tokens: telemetry flush on signal %d took over %.0f s; "
                             "going on", signum, FLUSH_TIMEOUT_S)
            except BaseException:
                pass
        if callable(previous):
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        signal.signal(signum, signal.SIG_DFL)  # the default action, as if we had never been here
        signal.raise_signal(signum)
    finally:
        _dispatching.discard(signum)


def install(*providers: Any) -> None:
    """Flush these providers (an SDK MeterProvider, TracerProvider: anything with force_flush) on a
    stop signal. Only the main thread can set handlers; elsewhere this does nothing (logged once). A
    signal that is ignored, or handled outside Python, is left alone."""
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
        if current is _on_signal or current is None or current == signal.SIG_IGN:
            continue
        try:
            signal.signal(signum, _on_signal)
        except (ValueError, OSError):
            continue
        _previous[signum] = current


def _after_worker_signals(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """gunicorn workers set their own handlers after the fork (UvicornWorker sets the default ones, and
    uvicorn re-raises SIGTERM with them after its graceful shutdown): put ours in front again, keeping
    gunicorn's choice that a stop signal does not interrupt system calls of requests in flight."""
    result = wrapped(*args, **kwargs)
    try:
        install()
        for signum in SIGNALS:
            if signal.getsignal(signum) is _on_signal:
                signal.siginterrupt(signum, False)
    except Exception:
        internal_error("stop signal handlers in a gunicorn worker")
    return result


def _hook_servers() -> None:
    if _HOOKED[0]:
        return
    _HOOKED[0] = True
    import wrapt

    for module_name, method in (("gunicorn.workers.base", "Worker.init_signals"),
                                ("uvicorn.workers", "UvicornWorker.init_signals"),  # overrides, no super()
                                ("uvicorn_worker", "UvicornWorker.init_signals")):  # its successor package
        wrapt.register_post_import_hook(
            lambda module, method=method: wrapt.wrap_function_wrapper(module, method, _after_worker_signals),
            module_name)


_HOOKED = [False]


def uninstall() -> None:
    """Put back the handlers we found, where ours is still the one installed (a handler an app put above
    ours may chain to ours: then ours stays, with what it chains to)."""
    for signum, previous in list(_previous.items()):
        if signal.getsignal(signum) is _on_signal and threading.current_thread() is threading.main_thread():
            signal.signal(signum, previous)
            _previous.pop(signum, None)
    _flushers.clear()
