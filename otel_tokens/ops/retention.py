"""Whether the time-series database keeps what the quota rules read: a month to date reads 32 days of hourly
buckets, the previous month 62, a year its closed months 370, while Prometheus keeps 15 days unless told otherwise and
VictoriaMetrics one month. Too short a retention makes those windows silently short (budgets under-count,
no error anywhere), so `otel-tokens rules --prometheus URL` warns."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from otel_tokens.ops.durations import duration_seconds, human_duration
from otel_tokens.prometheus_api import Prometheus, PrometheusError

_D = r"\d+[smhdwy](?:\d+[smhdwy])*"
_RANGE = re.compile(rf"\[({_D})(:\w*)?\](?:\s*offset\s+(-?)({_D}))?")
_VM_RETENTION = re.compile(r'^-retentionPeriod="?([^"\s]*)"?\s*$', re.MULTILINE)
_VM_PERIOD = re.compile(r"(\d+(?:\.\d+)?(?:e\d+)?)([a-z]*)", re.IGNORECASE)
_VM_UNITS = {"": 31 * 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 365 * 86400}
MAX_FLAGS = 1 << 20  # bytes of /flags read


def lookback(rule_file: Mapping[str, Any]) -> tuple[float, str]:
    """The longest look-back of any rule: its longest subquery plus the longest range read inside one (each
    with a positive offset), which is exact for the one level of subqueries the rules nest; and the rule."""
    longest, name = 0.0, ""
    for group in rule_file.get("groups") or []:
        for rule in group.get("rules") or []:
            reach = {True: 0.0, False: 0.0}  # subquery?: the longest
            for length, step, minus, offset in _RANGE.findall(str(rule.get("expr", ""))):
                seconds = duration_seconds(length) + (duration_seconds(offset) if offset and not minus else 0.0)
                reach[bool(step)] = max(reach[bool(step)], seconds)
            if sum(reach.values()) > longest:
                longest, name = sum(reach.values()), str(rule.get("record") or rule.get("alert"))
    return longest, name


def retention(url: str, timeout: float = 10.0) -> float | None:
    """Seconds of data the database at `url` keeps: Prometheus's `storageRetention` (its effective retention,
    the 15-day default included), else VictoriaMetrics's `-retentionPeriod` from /flags; None when only a
    size limit is set. PrometheusError when neither answers."""
    prometheus = Prometheus(url, timeout)
    try:
        info = prometheus.get("/api/v1/status/runtimeinfo", [])
    except PrometheusError as error:
        try:
            with prometheus._open(f"{prometheus.url}/flags", timeout=timeout) as response:
                flags = response.read(MAX_FLAGS).decode("utf-8", "replace")
        except (OSError, ValueError):
            raise error from None
        found = _VM_RETENTION.search(flags)
        period = _VM_PERIOD.fullmatch(found.group(1)) if found else None
        if period is None or period.group(2).lower() not in _VM_UNITS:
            raise error from None
        return float(period.group(1)) * _VM_UNITS[period.group(2).lower()]  # no unit: months
    text = str(info.get("storageRetention", "")) if isinstance(info, Mapping) else ""
    for part in text.split(" or "):
        try:
            return duration_seconds(part.strip())
        except ValueError:
            continue
    return None


def retention_warnings(rule_file: Mapping[str, Any], url: str) -> list[str]:
    """What to tell the operator: the database keeps less than the rules read back, or cannot be asked."""
    needed, rule = lookback(rule_file)
    try:
        kept = retention(url)
    except (PrometheusError, ValueError) as error:
        return [f"cannot read the retention of {url}: {error}"]
    if kept is None:
        return [f"{url} limits its data by size only: make sure it keeps at least {human_duration(needed)} "
                f"(the rule {rule} reads that far back)"]
    if kept < needed:
        return [f"{url} keeps {human_duration(kept)} of data, but the rule {rule} reads {human_duration(needed)} "
                f"back: that window will be short (budgets under-count). Keep at least {human_duration(needed)} "
                "(Prometheus --storage.tsdb.retention.time, VictoriaMetrics -retentionPeriod)"]
    return []

