"""Keeps telemetry failures away from the application: log once per condition, never raise."""

from __future__ import annotations

import logging

logger = logging.getLogger("otel_tokens")

_reported: set[str] = set()


def log_once(key: str, message: str, *args: object, level: int = logging.WARNING, exc_info: bool = False) -> None:
    """Log `message` the first time `key` is seen in this process, so a broken path costs one line,
    not one line per call."""
    if key in _reported:
        return
    _reported.add(key)
    logger.log(level, message, *args, exc_info=exc_info)


def internal_error(where: str) -> None:
    """Called from an `except Exception` in our code: one log line with the traceback, no raise."""
    log_once("internal:" + where, "otel-tokens: internal error in %s; telemetry for this call is incomplete", where,
             exc_info=True)
