"""The digest's quota table: every window of every principal (user, department, app: vocabulary.SCOPES) with a
limit recorded by the quota rules, its usage exactly at the report's time, when it resets (local midnight in the
organization's zone), and for the departments' and apps' month and year where the rules' burn rate leads by the
window's end. A principal with a grant in force has the limit the rules record with it (`limit_granted`, what the
alerts compare with), and its row says how much of that the grants add."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

from otel_tokens.ops.durations import promql_duration
from otel_tokens.ops.report.model import QuotaRow, _cost, _int
from otel_tokens.ops.rollups import usage_over
from otel_tokens.ops.rules import series
from otel_tokens.prometheus_api import Prometheus
from otel_tokens.quota import vocabulary
from otel_tokens.quota.calendar import MONTH, ROLLING, WINDOWS, YEAR, window_end, window_start
from otel_tokens.quota.file import RULES_WINDOWS
from otel_tokens.quota.vocabulary import KINDS, QuotaScope

PROJECTED = (MONTH, YEAR)  # the windows the rules forecast (the calendar scopes: departments, apps)


def _windows(scope: QuotaScope) -> tuple[str, ...]:
    return RULES_WINDOWS.get(scope.name, (scope.window,))


def _prefix(scope: QuotaScope, window: str) -> str:
    """The recorded names' window part: none for the scope's own window (llm_quota:user_tokens:limit_default),
    else the window (llm_quota:user_tokens:day_limit_default)."""
    return "" if window == scope.window else window


def quota_rows(prom: Prometheus, at: float, zone: str) -> tuple[bool, list[QuotaRow]]:
    """Usage against the limits the rules record, for the principals that have one (an override, or the
    default once they have usage in that window), every window.

    Usage is computed here, exactly at `at`, over the window as it stands then: the rolling 24 h, or from the
    local midnight that began the day, ISO week, month or year. The rules' own calendar windows are built from
    hourly buckets and lag by up to an hour, which suits an alert, not a report read at a given time."""
    wanted = {series(scope.name, k, what, _prefix(scope, w)): (scope, k, w, what)
              for scope in vocabulary.SCOPES for w in _windows(scope) for k in KINDS
              for what in ("limit_override", "limit_default", "limit_granted", "grant")}
    matcher = '{__name__=~"' + "|".join(re.escape(n) for n in wanted) + '"}'
    limits = _Limits()
    for metric, value in prom.instant(matcher, at):
        scope, kind, window, what = wanted[metric.get("__name__", "")]
        if what == "limit_default":
            limits.defaults[scope.name, kind, window] = value
        elif metric.get(scope.label):
            named = {"limit_override": limits.overrides, "limit_granted": limits.granted_limits,
                     "grant": limits.grants}[what][scope.name, kind, window]
            name = metric[scope.label]
            named[name] = named.get(name, 0.0) + value if what == "grant" else value  # a principal's grants: their sum
    if not limits.overrides and not limits.defaults:
        return False, []
    rows: list[QuotaRow] = []
    for scope in vocabulary.SCOPES:
        for window in _windows(scope):
            rows += _window_rows(prom, at, zone, scope, window, limits)
    order = [scope.name for scope in vocabulary.SCOPES]
    rows.sort(key=lambda q: (order.index(q.principal), WINDOWS.index(q.window), KINDS.index(q.quota), -q.ratio,
                             q.name))
    _project(prom, at, [q for q in rows if not vocabulary.BY_NAME[q.principal].rolling and q.window in PROJECTED])
    return True, rows


@dataclass
class _Limits:
    """The limit series at the report's time, per (scope, kind, window): overrides, granted limits and the sums of
    the grants in force by principal, and the defaults."""

    overrides: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    granted_limits: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    grants: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    defaults: dict[tuple[str, str, str], float] = field(default_factory=dict)


def _number(value: float, kind: str) -> float:
    return _int(value) if kind == vocabulary.TOKENS and value == int(value) else value


def _window_rows(prom: Prometheus, at: float, zone: str, scope: QuotaScope, window: str,
                 all_limits: _Limits) -> list[QuotaRow]:
    label = scope.label
    start = window_start(window, at, zone)
    resets = None if window == ROLLING else float(window_end(window, at, zone))
    span = promql_duration(max(0.001, at - start))
    rows = []
    for kind in KINDS:
        key = (scope.name, kind, window)
        limits = all_limits.overrides.get(key, {})
        default = all_limits.defaults.get(key)
        if not limits and default is None:
            continue
        granted_limits, grants = all_limits.granted_limits.get(key, {}), all_limits.grants.get(key, {})
        counter = vocabulary.ACCOUNTING_COUNTERS[kind]  # the history from before llm.quota.* too
        usage = {metric.get(label, ""): value for metric, value in prom.instant(usage_over(counter, label, span), at)}
        # a principal granted more is in the table even before its first use of the window
        who = set(limits) | set(granted_limits) | ({n for n, v in usage.items() if v > 0} if default is not None
                                                   else set())
        for name in who:
            limit = granted_limits.get(name, limits.get(name, default))
            if limit:
                value = usage.get(name, 0.0)
                granted = grants.get(name, 0.0) if name in granted_limits else 0.0
                rows.append(QuotaRow(scope.name, name, kind, window,
                                     _int(value) if kind == vocabulary.TOKENS else _cost(value),
                                     _number(limit, kind), resets, granted=_number(granted, kind)))
    return rows


def _project(prom: Prometheus, at: float, rows: list[QuotaRow]) -> None:
    """Window-end projection of the departments' and apps' month and year at the rules' burn rate (`otel-tokens rules`
    records it: the lower of the last 6 h's average and the median hour of the last 24 h), applied to the
    exact usage so far here, as the forecast alert applies it to the rules' own."""
    if not rows:
        return
    # per scope: a department and an app may share a name, and each has its own burn rate series
    burn: dict[tuple[str, str, str], float] = {}
    for principal, kind in {(q.principal, q.quota) for q in rows}:
        scope = vocabulary.BY_NAME[principal]
        for metric, value in prom.instant(series(scope.name, kind, "burn_rate"), at):
            burn[principal, kind, metric.get(scope.label, "")] = value
    for q in rows:
        rate = burn.get((q.principal, q.quota, q.name))
        if rate is None or not math.isfinite(rate) or q.resets_at is None:
            continue
        q.burn_rate = rate
        q.end_ratio = (q.usage + rate * max(0.0, q.resets_at - at) / 3600) / q.limit
        if rate > 0 and q.usage < q.limit and q.end_ratio >= 1:
            q.runs_out_at = round((at + 3600 * (q.limit - q.usage) / rate) / 60) * 60  # to the minute, as the rule
