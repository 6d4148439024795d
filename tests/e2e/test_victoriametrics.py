"""The rendered quota rules and the dashboards on VictoriaMetrics + vmalert, against Prometheus on the
same samples: the app's metrics scraped by Prometheus (which runs the rules itself) and remote-written
to VictoriaMetrics, where vmalert evaluates the same rule file, writes the recorded series back and
notifies the shipped Alertmanager. The stack starts when this module is collected (tests/conftest.py)."""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Collection
from typing import Any

import pytest

from otel_tokens.ops.rollups import usage_over
from otel_tokens.ops.rules import render
from tests.support.alert_app import TOKENS_PER_CALL
from tests.support.grafana import _dashboards, _queries, _variable_query, grafana_regex, interpolate, label_values
from tests.support.prometheus_stack import query
from tests.support.victoria_stack import APP, EARLY, VictoriaStack

DELAYS: dict[str, float] = {}
# MetricsQL's rate()/increase() do not extrapolate to the window's edges as PromQL's do, and count a series'
# first sample as increase from zero (the requests a process made before its first scrape), which PromQL does
# not: for these the series are compared, and that what Prometheus shows as > 0 is > 0 on VictoriaMetrics.
_EXTRAPOLATED = re.compile(r"\b(rate|irate|increase|deriv|predict_linear|histogram_quantile)\s*\(")


@pytest.fixture(scope="module")
def stack(early_victoria: VictoriaStack) -> VictoriaStack:
    return early_victoria


def _series(url: str, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("__name__", "alertgroup"))):
            float(r["value"][1]) for r in query(url, promql)}


def _numbers(series: dict[tuple[tuple[str, str], ...], float]) -> dict[tuple[tuple[str, str], ...], float]:
    return {k: v for k, v in series.items() if not math.isnan(v)}


def _alerts(url: str) -> set[tuple[str, str, str, str]]:
    """The firing alerts by name, severity, principal and window: alice's day and her 24 h apart (a settle check
    without the window passed while vmalert had her 24 h critical and not yet her day's)."""
    return {(labels["alertname"], labels["severity"], labels.get("user_id") or labels.get("department", ""),
             labels.get("window", "")) for labels in (dict(k) for k in _series(url, 'ALERTS{alertstate="firing"}'))}


def _is(severity: str, user: str, window: str = "24h") -> Any:
    """The user's alert of that window (alice's day, 1,050 tokens, alerts beside her 24 h at other percents)."""
    def match(path: str, alert: dict[str, Any]) -> bool:
        labels = alert["labels"]
        return (alert["status"] == "firing" and labels.get("alertname") == "LLMUserTokenQuota"
                and labels.get("severity") == severity and labels.get("user_id") == user
                and labels.get("window") == window)
    return match


def test_vmalert_notifies_the_shipped_alertmanager_and_drives_the_guard(stack: VictoriaStack) -> None:
    arrival, path, alert = stack.webhook.wait_for(_is("warning", "alice"), 0, timeout=120)
    DELAYS["warning"] = arrival - stack.crossed["warning"]
    assert path == "/warning"
    assert {k: alert["annotations"][k] for k in ("usage", "limit", "percent")} == {
        "usage": f"{9 * TOKENS_PER_CALL} tokens", "limit": "1k tokens", "percent": "90%"}  # vmalert's templates
    crossed = stack.generate("alice", "support", 2)  # 1100 of 1000
    arrival, path, alert = stack.webhook.wait_for(_is("critical", "alice"), crossed, timeout=120)
    DELAYS["critical"] = arrival - crossed
    assert path == "/critical" and alert["annotations"]["percent"] == "110%"
    _, path, alert = stack.webhook.wait_for(_is("critical", "alice", "day"), crossed, timeout=60)  # her day too
    assert path == "/critical" and alert["annotations"]["percent"] == "104.8%"
    deadline = time.monotonic() + 30
    while stack.guard.state.snapshot()["users"].get("alice", {}).get("severity") != "critical":
        assert time.monotonic() < deadline, stack.guard.state.snapshot()  # the guard follows vmalert's alert state
        time.sleep(0.2)
    assert "bob" not in stack.guard.state.snapshot()["users"]
    print(f"\nVictoriaMetrics + vmalert, crossing -> notification: warning {DELAYS['warning']:.1f}s, "
          f"critical {DELAYS['critical']:.1f}s (test timers: scrape/eval 1s, for 1s, group_wait 1s, "
          f"-search.latencyOffset=1s)")


@functools.cache
def _rules() -> tuple[dict[str, Any], ...]:
    return tuple(rule for group in render(EARLY.quotas)["groups"] for rule in group["rules"])


def _recorded() -> list[str]:
    return sorted({rule["record"] for rule in _rules() if "record" in rule})


# Forecasts read time() (the hours left in the month): two engines evaluating seconds apart differ by
# the burn of those seconds, under 1e-4 of a month's projection.
_TIME_DEPENDENT = (":forecast", ":forecast_ratio", ":exhaustion_time")
_HOURLY_SUBQUERY = re.compile(r"\[\w+:1h\]")


def _reads(expr: str, names: Collection[str]) -> bool:
    """Whether the expression reads any of the names: spelled out, or matched by a `__name__=~"..."` regex (the
    every-window panels)."""
    if any(re.search(rf"{re.escape(name)}\b", expr) for name in names):
        return True
    patterns = [re.compile(p) for p in re.findall(r'__name__=~"([^"]+)"', expr)]
    return any(p.fullmatch(name) for p in patterns for name in names)


@functools.cache
def _hour_aligned() -> frozenset[str]:
    """The recorded series read at hour boundaries (`[32d:1h]` subqueries over the hourly rollup), and
    every series and department alert built on them. Each engine reads the rollup sample *it* recorded
    last before the boundary; the two engines' rule groups run at different phases, so traffic that
    lands between the two samples is in one engine's month and not yet in the other's, until the next
    boundary an hour later. tests/e2e/test_forecast_victoriametrics.py compares these exactly on VM's engine
    over the same recorded samples."""
    named = [(rule.get("record") or rule["alert"], rule["expr"]) for rule in _rules()]  # an alert per severity
    found = {name for name, expr in named if _HOURLY_SUBQUERY.search(expr)}
    while more := {name for name, expr in named if name not in found and _reads(expr, found)}:
        found |= more
    return frozenset(found)


def _not_comparable(stack: VictoriaStack) -> frozenset[str]:
    """Before the stack's first hour boundary no engine has an hour-aligned sample: both are empty and
    compared; after it, see _hour_aligned."""
    straddles = int(stack.values["launched_at"] // 3600) != int(time.time() // 3600)
    return _hour_aligned() if straddles else frozenset()


def _zero_drops(series: dict[tuple[tuple[str, str], ...], float],
                other: dict[tuple[tuple[str, str], ...], float]) -> dict[tuple[tuple[str, str], ...], float]:
    """A `drop`/`drop2` part that the other engine wrote as 0 counts as 0 here too: the window's sum reads a
    missing drop as zero, and an engine writes the zero drops only from its second parts write on (they are
    the previous write's principals), up to 5 minutes after the other engine's second write."""
    zeros = {k: 0.0 for k, v in other.items() if v == 0 and dict(k).get("part") in ("drop", "drop2")}
    return zeros | series


def _differences(stack: VictoriaStack) -> dict[str, Any]:
    out = {}
    skipped = _not_comparable(stack)
    for name in sorted(set(_recorded()) - skipped):
        prometheus, victoria = _series(stack.prometheus, name), _series(stack.victoria, name)
        prometheus, victoria = _zero_drops(prometheus, victoria), _zero_drops(victoria, prometheus)
        tolerance = 1e-4 if name.endswith(_TIME_DEPENDENT) else 1e-9
        differing = {k: (prometheus.get(k), victoria.get(k)) for k in prometheus.keys() | victoria.keys()
                     if k not in prometheus or k not in victoria
                     or not math.isclose(prometheus[k], victoria[k], rel_tol=tolerance)}
        if differing:  # only what differs, each key's (Prometheus, VictoriaMetrics) value: short enough to read
            out[name] = {",".join(f"{k}={v}" for k, v in key): values for key, values in differing.items()}
    prometheus_alerts, victoria_alerts = ({a for a in _alerts(url) if a[0] not in skipped}
                                          for url in (stack.prometheus, stack.victoria))
    if prometheus_alerts != victoria_alerts:
        out["ALERTS"] = (prometheus_alerts, victoria_alerts)
    return out


def test_every_recorded_series_and_alert_equals_prometheus(stack: VictoriaStack) -> None:
    """Compared once both engines have written a 5-minute bucket (vmalert's recorded series are read
    back from VictoriaMetrics a moment after they are written) and the comparison stands still."""
    # bob's calls are made at launch; a scrape that lands just past a 5-minute boundary puts them in the next
    # bucket, written 30-90 s after it ends: up to two buckets and a write (a loaded CI machine took over 420 s)
    deadline = time.monotonic() + 720
    # counted over 10 minutes, not read at the instant: a rollup sample is stale from the next evaluation of its
    # group on, and the two engines' phases can leave no moment where both show theirs
    while not all(_series(url, 'count_over_time(llm_quota:user_tokens:5m{user_id="bob"}[10m])')
                  for url in (stack.prometheus, stack.victoria)):
        assert time.monotonic() < deadline, "no 5-minute bucket written on both engines"
        time.sleep(2)
    expected_users = {"alice": 11 * TOKENS_PER_CALL, "bob": 3 * TOKENS_PER_CALL}
    expected_departments = {"support": 11 * TOKENS_PER_CALL, "research": 3 * TOKENS_PER_CALL}

    def users() -> dict[str, float]:
        return {dict(k)["user_id"]: v for k, v in _series(stack.victoria, "llm_quota:user_tokens:24h").items()}

    def departments() -> dict[str, float]:  # the hourly bucket's own computation (it is recorded once an hour)
        return {dict(k)["department"]: v for k, v in
                _series(stack.victoria, usage_over("llm_quota_tokens_total", "department", "1h")).items()}

    deadline = time.monotonic() + 240  # the parts group runs at a different phase on each engine (every minute)
    while (differences := _differences(stack)) or users() != expected_users \
            or departments() != expected_departments:
        assert time.monotonic() < deadline, (differences, users(), departments())
        time.sleep(1)
    assert {("LLMUserTokenQuota", severity, "alice", window) for severity in ("warning", "critical")
            for window in ("24h", "day")} <= _alerts(stack.victoria)


def test_every_dashboard_query_runs_on_victoriametrics_as_on_prometheus(stack: VictoriaStack) -> None:
    ran = 0
    skipped = _not_comparable(stack)
    for dashboard in _dashboards().values():
        variables = dashboard["templating"]["list"]
        options: dict[str, list[str]] = {}
        values = {v["name"]: v["allValue"] for v in variables}
        for variable in variables:
            options[variable["name"]] = found = label_values(stack.victoria, variable["definition"], values)
            assert found == label_values(stack.prometheus, variable["definition"], values), variable["name"]
        assert options["user"] == ["alice", "bob"] and options["app"] == [APP]
        substitutions = [values, *({**values, name: grafana_regex([value])}
                                   for name, vals in options.items() for value in vals)]
        for substitution in substitutions:
            for where, expr in _queries(dashboard):
                if expr.startswith("label_values("):
                    assert label_values(stack.victoria, _variable_query({"query": expr}), substitution) == \
                        label_values(stack.prometheus, _variable_query({"query": expr}), substitution), where
                    continue
                promql = interpolate(expr, substitution)
                # MetricsQL drops NaN results (a quantile of no requests) where PromQL returns NaN: both show nothing
                victoria, prometheus = (_numbers(_series(url, promql)) for url in (stack.victoria, stack.prometheus))
                ran += 1
                if skipped:  # an hour boundary has passed (both ran, without error)
                    if _reads(promql, skipped):
                        continue
                    victoria, prometheus = ({k: v for k, v in found.items() if dict(k).get("alertname") not in skipped}
                                            for found in (victoria, prometheus))
                extrapolated = _EXTRAPOLATED.search(promql) is not None
                # where PromQL saw no increase yet (0/0), MetricsQL may already have counted the first sample
                assert victoria.keys() >= prometheus.keys() if extrapolated else victoria.keys() == prometheus.keys(), \
                    f"{where}: {promql}\n{victoria}\n{prometheus}"
                for key, value in victoria.items():
                    if key not in prometheus:
                        assert value >= 0 and math.isfinite(value), (where, promql, key, value)
                    elif extrapolated:
                        assert value >= 0 and (value > 0 or prometheus[key] <= 0), (where, promql, key, value,
                                                                                     prometheus[key])
                    else:
                        assert math.isclose(value, prometheus[key], rel_tol=1e-6, abs_tol=1e-9), (
                            where, promql, key, value, prometheus[key])
    assert ran > 100
