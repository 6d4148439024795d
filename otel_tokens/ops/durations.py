"""Prometheus durations both ways (24h, 1h30m, 4m30s), for the rules and the report."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_WHOLE = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_seconds(text: str) -> float:
    """Seconds in a Prometheus duration; ValueError when it is not one."""
    if not isinstance(text, str) or not _WHOLE.fullmatch(text.strip()):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return float(sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(text.strip())))


def promql_duration(seconds: float) -> str:
    """The shortest exact PromQL duration for a number of seconds (rounded to milliseconds)."""
    ms = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def human_duration(seconds: float) -> str:
    text, rest = "", round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if rest >= size:
            text += f"{rest // size}{unit}"
            rest %= size
    return text or "0s"
