"""The week, month and year windows from hourly buckets, by the real promtool, in Asia/Shanghai (UTC+8): a
department's year across the year boundary (yesterday's usage gone at local midnight, the closed months
counted from their recorded totals), the hour a month closes, an ISO week, a user's month. promtool starts
at 1970-01-01 00:00 UTC (08:00 in Shanghai): the offsets are rendered for 1970.

The year-long tests evaluate once a day at 00:00 UTC: each evaluation writes the hourly bucket that ended
then (23:00-24:00 UTC, 07:00-08:00 local), so the counters here grow only in that hour."""

from __future__ import annotations

from datetime import date

import pytest

from otel_tokens.ops.local_time import LocalTime
from otel_tokens.quota.calendar import OffsetTable
from tests.support.promtool_rules import dept, promtool_test
from tests.support.promtool_series import tokens

DAY = 24  # samples a day at the 1 h input interval


def counter(steps: dict[int, float], samples: int) -> str:
    """promtool values of a counter sampled `samples` times that grows by steps[i] at sample i."""
    value, runs, out = 0.0, [], []
    for i in range(samples):
        value += steps.get(i, 0)
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    for value, count in runs:
        out.append(f"{value:g}x{count - 1}")
    return " ".join(out)


def _sample(name: str, label: str, who: str, value: float) -> dict:
    return {"labels": f'{name}{{{label}="{who}"}}', "value": value}


def _alert(principal: str, who: str, kind: str, window: str, severity: str, usage: str, limit: str, percent: str,
           span: str) -> dict:
    label = "user_id" if principal == "user" else "department"
    unit = " tokens" if kind == "tokens" else ""
    verb = "is nearing" if severity == "warning" else "has reached"
    return {"exp_labels": {label: who, "severity": severity, "window": window, "quota": kind},
            "exp_annotations": {
                "summary": f"{principal.capitalize()} {who} {verb} the {'token' if kind == 'tokens' else 'cost'} "
                           f"quota of the {window} ({percent})",
                "description": f"{principal.capitalize()} {who} used {usage}{unit} of {limit}{unit} ({percent}) "
                               f"{span} (Asia/Shanghai).",
                "usage": f"{usage}{unit}", "limit": f"{limit}{unit}", "percent": percent}}


def test_a_departments_year_closes_at_local_midnight_and_counts_its_closed_months_once(tmp_path):
    # The bucket ending at 00:00 UTC of day d is 07:00-08:00 local of that day: day 20 (Jan 21), day 45 (Feb 15),
    # day 364 (Dec 31, 1970) and day 365 (Jan 1, 1971 local: the new year)
    year = "llm_quota:department_tokens:year"
    series = [dept("sales", counter({20 * DAY: 300, 45 * DAY: 200, 364 * DAY: 100, 365 * DAY: 400}, 367 * DAY),
                   metric="llm_quota_tokens_total")]
    quotas = {"timezone": "Asia/Shanghai", "departments": {"default": {"year": {"tokens": 700}}}}
    tests = {"evaluation_interval": "1d", "tests": [{
        "interval": "1h",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": "364d", "alertname": "LLMDepartmentTokenBudget", "exp_alerts": []},  # pending
            {"eval_time": "365d", "alertname": "LLMDepartmentTokenBudget", "exp_alerts": []},  # 1971: 400 of 700
        ],
        "promql_expr_test": [
            {"expr": f'{year}{{department="sales"}}', "eval_time": "31d", "exp_samples": [
                _sample(year, "department", "sales", 300)]},  # January closed on Feb 1, recorded that hour
            {"expr": f'{year}{{department="sales"}}', "eval_time": "200d", "exp_samples": [
                _sample(year, "department", "sales", 500)]},
            {"expr": 'llm_quota:department_tokens:year_ratio{department="sales"}', "eval_time": "364d",
             "exp_samples": [_sample("llm_quota:department_tokens:year_ratio", "department", "sales", 600 / 700)]},
            {"expr": f'{year}{{department="sales"}}', "eval_time": "365d", "exp_samples": [
                _sample(year, "department", "sales", 400)]},
            # each month of 1970 recorded twice, at 00:00 UTC of the first two local days of the next month
            {"expr": 'count_over_time(llm_quota:department_tokens:closed_month{department="sales"}[370d])',
             "eval_time": "366d", "exp_samples": [
                 {"labels": f'{{department="sales",month="1970{m:02d}"}}', "value": 2} for m in range(1, 13)]},
            {"expr": 'max_over_time(llm_quota:department_tokens:closed_month{department="sales"}[370d]) > 0',
             "eval_time": "366d", "exp_samples": [
                 {"labels": f'{{department="sales",month="1970{m:02d}"}}', "value": v}
                 for m, v in ((1, 300), (2, 200), (12, 100))]},
        ],
    }]}
    promtool_test(tmp_path, tests, quotas, today=date(1970, 1, 1))


def test_the_year_alerts_in_the_hour_the_month_before_closed(tmp_path):
    """Evaluated hourly: January's last local hour (500 at 23:30 local) is counted in the year from the hour
    the month closed (local midnight, 16:00 UTC): until January's total is recorded (00:00 UTC, 08:00 local) its
    last month to date and its last hour stand in; February's first hour adds to it."""
    q = 4  # samples an hour at 15 m
    series = [dept("sales", counter({(30 * 24 + 15) * q + 2: 500, (30 * 24 + 16) * q + 2: 300}, 32 * 24 * q),
                   metric="llm_quota_cost_total")]
    quotas = {"timezone": "Asia/Shanghai", "departments": {"overrides": {"sales": {"year": {"cost": 700}}}}}
    year = "llm_quota:department_cost:year"
    tests = {"evaluation_interval": "1h", "tests": [{
        "interval": "15m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": "30d18h", "alertname": "LLMDepartmentCostBudget", "exp_alerts": [
                _alert("department", "sales", "cost", "year", severity, "800", "700", "114.3%", "this year")
                for severity in ("critical", "warning")]},
        ],
        "promql_expr_test": [
            {"expr": f'{year}{{department="sales"}}', "eval_time": "31d1h", "exp_samples": [
                _sample(year, "department", "sales", 800)]},  # January recorded at 00:00 UTC: the same 800
            {"expr": 'llm_quota:department_cost:closed_month{department="sales"}', "eval_time": "31d", "exp_samples": [
                {"labels": 'llm_quota:department_cost:closed_month{department="sales",month="197001"}',
                 "value": 500}]},
            {"expr": f'{year}{{department="sales"}}', "eval_time": "30d15h", "exp_samples": [
                _sample(year, "department", "sales", 0)]},  # the hour of 23:30 local is not closed yet
            {"expr": f'{year}{{department="sales"}}', "eval_time": "30d16h", "exp_samples": [
                _sample(year, "department", "sales", 500)]},
            {"expr": f'{year}{{department="sales"}}', "eval_time": "30d17h", "exp_samples": [
                _sample(year, "department", "sales", 800)]},
        ],
    }]}
    promtool_test(tmp_path, tests, quotas, today=date(1970, 1, 1))


@pytest.mark.parametrize(("principal", "make"), [("department", lambda v: dept("sales", v)),
                                                 ("user", lambda v: tokens("sales", v))])
def test_an_iso_week_begins_on_monday_at_local_midnight(tmp_path, principal, make):
    # Monday Jan 5 1970 began at 00:00 local = Jan 4 16:00 UTC: day 3's and day 4's buckets (Jan 4 and Jan 5 07:00
    # local) are in different weeks; day 11's (Jan 12) in the week after
    section = f"{principal}s"
    quotas = {"timezone": "Asia/Shanghai", section: {"default": {"week": {"tokens": 1000}}}}
    label = "user_id" if principal == "user" else "department"
    week = f"llm_quota:{principal}_tokens:week"
    ratio = f"llm_quota:{principal}_tokens:week_ratio"
    tests = {"evaluation_interval": "1d", "tests": [{
        "interval": "1h",
        "input_series": [make(counter({3 * DAY: 900, 4 * DAY: 50, 11 * DAY: 70}, 13 * DAY))],
        "alert_rule_test": [
            {"eval_time": "4d", "alertname": f"LLM{principal.capitalize()}TokenQuota" if principal == "user"
             else "LLMDepartmentTokenBudget", "exp_alerts": []},
        ],
        "promql_expr_test": [
            {"expr": f'{ratio}{{{label}="sales"}}', "eval_time": "3d", "exp_samples": [
                _sample(ratio, label, "sales", 0.9)]},
            {"expr": f'sum without (week) ({week}{{{label}="sales"}})', "eval_time": "4d", "exp_samples": [
                {"labels": f'{{{label}="sales"}}', "value": 50}]},
            {"expr": f'{ratio}{{{label}="sales"}}', "eval_time": "10d", "exp_samples": [
                _sample(ratio, label, "sales", 0.05)]},
            {"expr": f'{ratio}{{{label}="sales"}}', "eval_time": "11d", "exp_samples": [
                _sample(ratio, label, "sales", 0.07)]},
        ],
    }]}
    promtool_test(tmp_path, tests, quotas, today=date(1970, 1, 1))


def test_a_users_day_and_month_alert_side_by_side(tmp_path):
    """A user with a day and a month limit: both alerts fire at once, each with its own `window` label (alert
    mode and Alertmanager keep them apart by it)."""
    quotas = {"timezone": "Asia/Shanghai", "users": {"default": {"day": {"tokens": 1000}, "month": {"tokens": 1200}}}}
    # 1,100 at 02:10 UTC (10:10 local): over the day's 1,000 and 92 % of the month's 1,200
    series = [tokens("li", counter({2 * 60 + 10: 1100}, 4 * 60))]
    tests = {"evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": "3h20m", "alertname": "LLMUserTokenQuota", "exp_alerts": [
                _alert("user", "li", "tokens", "day", "critical", "1.1k", "1k", "110%", "today"),
                _alert("user", "li", "tokens", "day", "warning", "1.1k", "1k", "110%", "today"),
                _alert("user", "li", "tokens", "month", "warning", "1.1k", "1.2k", "91.67%", "this calendar month")]},
        ],
        "promql_expr_test": [
            # the month counts the hour 02:00-03:00 UTC once it is written (03:00-03:15)
            {"expr": 'llm_quota:user_tokens:month_ratio{user_id="li"}', "eval_time": "2h50m", "exp_samples": [
                _sample("llm_quota:user_tokens:month_ratio", "user_id", "li", 0)]},
        ],
    }]}
    promtool_test(tmp_path, tests, quotas, today=date(1970, 1, 1))


def test_a_users_month_ends_at_local_midnight(tmp_path):
    """At 00:00 local on Feb 1 (Jan 31 16:00 UTC) January's usage leaves the user's month."""
    quotas = {"timezone": "Asia/Shanghai", "users": {"default": {"month": {"tokens": 1200}}}}
    q = 4
    series = [tokens("li", counter({(30 * 24 + 14) * q + 2: 1100}, 33 * 24 * q))]  # 22:30 local on Jan 31
    month = "llm_quota:user_tokens:month_ratio"
    tests = {"evaluation_interval": "1h", "tests": [{
        "interval": "15m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": "30d16h", "alertname": "LLMUserTokenQuota", "exp_alerts": []},
        ],
        "promql_expr_test": [
            {"expr": f'{month}{{user_id="li"}}', "eval_time": "30d15h", "exp_samples": [
                _sample(month, "user_id", "li", 1100 / 1200)]},
            {"expr": f'{month}{{user_id="li"}}', "eval_time": "30d16h", "exp_samples": []},
        ],
    }]}
    promtool_test(tmp_path, tests, quotas, today=date(1970, 1, 1))


@pytest.mark.parametrize(("zone", "size"), [("Asia/Kolkata", "30m"), ("Asia/Kathmandu", "15m")])
def test_zones_off_whole_hours_use_half_or_quarter_hour_buckets(tmp_path, monkeypatch, zone, size):
    """Asia/Kolkata (+05:30) and Asia/Kathmandu (+05:45, since 1986: its offset is written for 1970 here): buckets
    of 30 and 15 minutes begin at their local midnight. Monday Jan 5 1970 began at 18:30 and 18:15 UTC on Jan 4:
    900 tokens at 17:40 UTC (Sunday night, local) count in the old week, 50 at 18:40 UTC (Monday) in the new one,
    at once. (promtool's engine holds at most 10,000 samples: a month's subqueries at these steps exceed it, so
    the month is checked on VictoriaMetrics, tests/e2e/test_calendar_victoriametrics.py.)"""
    offset = 19800 if size == "30m" else 20700
    table = OffsetTable(zone, -86400, 40 * 86400, offset, ())
    monkeypatch.setattr(LocalTime, "of", classmethod(lambda cls, name, today=None: cls(name, table)))
    five = 12  # samples an hour at 5 m
    series = [dept("sales", counter({(3 * 24 + 17) * five + 8: 900, (3 * 24 + 18) * five + 8: 50},
                                    (3 * 24 + 20) * five))]
    quotas = {"timezone": zone, "departments": {"default": {"week": {"tokens": 1000}}}}
    ratio = "llm_quota:department_tokens:week_ratio"
    tests = {"evaluation_interval": "15m", "tests": [{
        "interval": "5m",
        "input_series": series,
        "promql_expr_test": [
            {"expr": f'{ratio}{{department="sales"}}', "eval_time": "3d18h", "exp_samples": [
                _sample(ratio, "department", "sales", 0.9)]},
            {"expr": f'{ratio}{{department="sales"}}', "eval_time": "3d19h", "exp_samples": [
                _sample(ratio, "department", "sales", 0.05)]},
            {"expr": f'count(llm_quota:department_tokens:{size}{{department="sales"}})', "eval_time": "3d19h",
             "exp_samples": [{"labels": "{}", "value": 1}]},
        ],
    }]}
    promtool_test(tmp_path, tests, quotas, today=date(1970, 1, 1))
