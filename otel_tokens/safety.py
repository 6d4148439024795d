"""Keeps telemetry failures away from the application: log once per condition, never raise."""

from __future__ import annotations

import logging
import unicodedata

logger = logging.getLogger("otel_tokens")

_reported: set[str] = set()


# invisible characters that make one person two ids: zero-width space/joiners, word joiner, BOM, soft hyphen
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"))


def normalize_id(value: str) -> str:
    """One spelling per id: Unicode NFKC (fullwidth `ａｌｉｃｅ` is `alice`, compatibility forms folded) with
    invisible characters removed. ASCII is already normal. Look-alikes from other scripts (a Cyrillic `а`)
    stay distinct: telling them from real names in that script is a policy, not a normalization."""
    if value.isascii():
        return value
    return unicodedata.normalize("NFKC", value).translate(_INVISIBLE)


def valid_text(value: str) -> str:
    """`value` as valid UTF-8: a lone surrogate (from a server's JSON `\\ud800`, or a caller's string)
    written as its \\udXXX escape. One such label value makes the Prometheus exporter answer 500 for
    every scrape of the process, so every value that becomes a label goes through here."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


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
