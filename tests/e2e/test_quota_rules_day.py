"""A user's calendar day in the rules, by the real promtool: local midnight in Asia/Shanghai (16:00 UTC), the
last minutes of the day before it, the rolling 24 h beside it. promtool starts at 1970-01-01 00:00 UTC
(08:00 in Shanghai): the offsets are rendered for 1970."""

from __future__ import annotations

from datetime import date

import pytest

from otel_tokens.ops.local_time import LocalTime
from otel_tokens.quota.calendar import OffsetTable
from tests.support.promtool_rules import promtool_test
from tests.support.promtool_series import tokens

SHANGHAI = {"timezone": "Asia/Shanghai", "warning_ratio": 0.8,
            "users": {"default": {"day": {"tokens": 1000}}, "overrides": {"big": {"day": {"tokens": 5000}}}}}


def _day(user: str, value: float) -> dict:
    return {"labels": f'llm_quota:user_tokens:day{{user_id="{user}"}}', "value": value}


def _alert(user: str, severity: str, usage: str, limit: str, percent: str) -> dict:
    verb = "is nearing" if severity == "warning" else "has reached"
    return {"exp_labels": {"user_id": user, "severity": severity, "window": "day", "quota": "tokens"},
            "exp_annotations": {
                "summary": f"User {user} {verb} the token quota of the day ({percent})",
                "description": f"User {user} used {usage} tokens of {limit} tokens ({percent}) today (Asia/Shanghai).",
                "usage": f"{usage} tokens", "limit": f"{limit} tokens", "percent": percent}}


def test_a_users_day_begins_at_local_midnight_and_yesterdays_last_minutes_stay_in_yesterday(tmp_path):
    # li: 900 at 15:30 UTC (23:30 local), 100 more at 15:57 (23:57, in the day's last bucket), 200 at 16:08
    # (00:08 the next day). big: 4,500 at 16:12 (its own limit 5,000).
    series = [tokens("li", "0x929 900x26 1000x10 1200x300"),
              tokens("big", "0x971 4500x300"),
              tokens("gone", "0x929 500x20")]  # 500 at 23:30 local, then its process is gone (no series)
    tests = {"evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": "15h50m", "alertname": "LLMUserTokenQuota",
             "exp_alerts": [_alert("li", "warning", "900", "1k", "90%")]},
            {"eval_time": "15h59m", "alertname": "LLMUserTokenQuota", "exp_alerts": [
                _alert("li", "critical", "1k", "1k", "100%"), _alert("li", "warning", "1k", "1k", "100%")]},
            # 00:05 local: yesterday's 1,000 no longer count for the day (the rolling 24 h still holds them)
            {"eval_time": "16h5m", "alertname": "LLMUserTokenQuota", "exp_alerts": []},
            {"eval_time": "16h30m", "alertname": "LLMUserTokenQuota",
             "exp_alerts": [_alert("big", "warning", "4.5k", "5k", "90%")]},
        ],
        "promql_expr_test": [
            {"expr": 'llm_quota:user_tokens:day{user_id="li"}', "eval_time": "15h50m",
             "exp_samples": [_day("li", 900)]},
            {"expr": 'llm_quota:user_tokens:day{user_id="li"}', "eval_time": "15h58m",
             "exp_samples": [_day("li", 1000)]},  # the 100 at 23:57, from the raw data (its bucket is open)
            # in the 90 s after midnight the day shows nothing (the bucket of 23:55-24:00 is not written yet)
            {"expr": 'llm_quota:user_tokens:day{user_id="li"}', "eval_time": "16h1m", "exp_samples": []},
            {"expr": 'llm_quota:user_tokens:day{user_id="li"}', "eval_time": "16h2m", "exp_samples": [_day("li", 0)]},
            {"expr": 'llm_quota:user_tokens:day{user_id="li"}', "eval_time": "16h7m", "exp_samples": [_day("li", 0)]},
            {"expr": 'llm_quota:user_tokens:day{user_id="li"}', "eval_time": "16h9m",
             "exp_samples": [_day("li", 200)]},  # from the raw data since 16:05
            {"expr": 'llm_quota:user_tokens:day{user_id="li"}', "eval_time": "16h20m",
             "exp_samples": [_day("li", 200)]},  # from the closed buckets of the day
            # a user with no bucket today: yesterday's day part never stands for today's, then nothing at all
            {"expr": 'llm_quota:user_tokens:day{user_id="gone"}', "eval_time": "15h58m",
             "exp_samples": [_day("gone", 500)]},
            {"expr": 'llm_quota:user_tokens:day{user_id="gone"}', "eval_time": "16h7m", "exp_samples": []},
            *({"expr": 'llm_quota:user_tokens:day{user_id="gone"}', "eval_time": at, "exp_samples": [_day("gone", 0)]}
              for at in ("16h12m", "16h20m")),
            {"expr": 'llm_quota:user_tokens:day{user_id="gone"}', "eval_time": "16h40m", "exp_samples": []},
            {"expr": 'llm_quota:user_tokens:24h{user_id="li"}', "eval_time": "16h20m",
             "exp_samples": [{"labels": 'llm_quota:user_tokens:24h{user_id="li"}', "value": 1200}]},
            {"expr": 'llm_quota:user_tokens:day_limit{user_id=~"li|big"}', "eval_time": "16h30m", "exp_samples": [
                {"labels": 'llm_quota:user_tokens:day_limit{user_id="big"}', "value": 5000},
                {"labels": 'llm_quota:user_tokens:day_limit{user_id="li"}', "value": 1000}]},
        ],
    }]}
    promtool_test(tmp_path, tests, SHANGHAI, today=date(1970, 1, 1))


# New York's clocks moved to 1970-01-01 (promtool's first day; no zone changes its offset in 1970's first weeks):
# forward at 02:00 EST (07:00 UTC), a 23-hour day from 05:00 UTC to 04:00 UTC; or back at 02:00 EDT (06:00 UTC),
# a 25-hour day from 04:00 UTC to 05:00 UTC. The rules get the table as they get tzdata's (LocalTime).
FORWARD = OffsetTable("America/New_York", -86400, 40 * 86400, -18000, ((7 * 3600, -14400),))
BACK = OffsetTable("America/New_York", -86400, 40 * 86400, -14400, ((6 * 3600, -18000),))


@pytest.mark.parametrize(("table", "before", "first", "last", "after"), [
    # 23 h: 04:30 UTC is Dec 31 (23:30 EST); 05:10 UTC is Jan 1; the day ends at 04:00 UTC Jan 2 (00:00 EDT)
    (FORWARD, 270, 310, "27h55m", "28h5m"),
    # 25 h: 03:30 UTC is Dec 31 (23:30 EDT); 04:10 UTC is Jan 1; the day ends at 05:00 UTC Jan 2 (00:00 EST)
    (BACK, 210, 250, "28h55m", "29h5m"),
], ids=["23-hour day", "25-hour day"])
def test_a_dst_day_holds_its_own_hours_and_not_one_more(tmp_path, monkeypatch, table, before, first, last, after):
    monkeypatch.setattr(LocalTime, "of", classmethod(lambda cls, zone, today=None: cls(zone, table)))
    quotas = {"timezone": "America/New_York", "users": {"default": {"day": {"tokens": 1000}}}}
    # 300 the minute before the day, 400 in its first minutes, then nothing
    series = [tokens("ny", f"0x{before - 1} 300x{first - before - 1} 700x1800")]
    tests = {"evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": series,
        "promql_expr_test": [
            {"expr": "llm_quota:user_tokens:day", "eval_time": "20h", "exp_samples": [_day("ny", 400)]},
            {"expr": "llm_quota:user_tokens:day", "eval_time": last, "exp_samples": [_day("ny", 400)]},
            {"expr": "llm_quota:user_tokens:day", "eval_time": after, "exp_samples": [_day("ny", 0)]},
        ],
    }]}
    promtool_test(tmp_path, tests, quotas)


def test_a_day_in_a_half_hour_zone_begins_at_its_local_midnight(tmp_path):
    """Asia/Kolkata (+05:30): the day begins at 18:30 UTC, on a 5-minute boundary like every zone's."""
    quotas = {"timezone": "Asia/Kolkata", "users": {"default": {"day": {"tokens": 1000}}}}
    series = [tokens("in", "0x1099 300x24 700x200")]  # 300 at 18:20 UTC (23:50 IST), 400 more at 18:45 (00:15)
    tests = {"evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": series,
        "promql_expr_test": [
            {"expr": "llm_quota:user_tokens:day", "eval_time": "18h29m", "exp_samples": [_day("in", 300)]},
            {"expr": "llm_quota:user_tokens:day", "eval_time": "18h35m", "exp_samples": [_day("in", 0)]},
            {"expr": "llm_quota:user_tokens:day", "eval_time": "19h", "exp_samples": [_day("in", 400)]},
        ],
    }]}
    promtool_test(tmp_path, tests, quotas, today=date(1970, 1, 1))


def test_a_users_24h_and_day_alerts_fire_side_by_side_told_apart_by_window(tmp_path):
    quotas = {"timezone": "Asia/Shanghai", "users": {"default": {"24h": {"tokens": 1100}, "day": {"tokens": 1000}}}}
    rolling = {"exp_labels": {"user_id": "li", "severity": "warning", "window": "24h", "quota": "tokens"},
               "exp_annotations": {
                   "summary": "User li is nearing the daily token quota (90.91%)",
                   "description": "User li used 1k tokens of 1.1k tokens (90.91%) in the last 24 h.",
                   "usage": "1k tokens", "limit": "1.1k tokens", "percent": "90.91%"}}
    tests = {"evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [tokens("li", "0x929 900x26 1000x100")],
        "alert_rule_test": [
            {"eval_time": "15h59m", "alertname": "LLMUserTokenQuota", "exp_alerts": [
                rolling, _alert("li", "critical", "1k", "1k", "100%"), _alert("li", "warning", "1k", "1k", "100%")]},
            # 00:05 local: the day starts again, the rolling 24 h still holds yesterday's evening
            {"eval_time": "16h5m", "alertname": "LLMUserTokenQuota", "exp_alerts": [rolling]},
        ],
    }]}
    promtool_test(tmp_path, tests, quotas, today=date(1970, 1, 1))


def test_a_departments_day_begins_at_local_midnight_too(tmp_path):
    """A department's day (LLMDepartmentTokenBudget, window="day") on the users' 5-minute machinery, over a
    rolling view of the departments: the same midnight as a user's, with the department's month beside it."""
    from tests.support.promtool_rules import dept

    quotas = {"timezone": "Asia/Shanghai",
              "departments": {"default": {"day": {"tokens": 1000}, "month": {"tokens": 100000}}}}
    day = "llm_quota:department_tokens:day"

    def alert(severity: str, usage: str, percent: str) -> dict:
        verb = "is nearing" if severity == "warning" else "has reached"
        return {"exp_labels": {"department": "sales", "severity": severity, "window": "day", "quota": "tokens"},
                "exp_annotations": {
                    "summary": f"Department sales {verb} the token quota of the day ({percent})",
                    "description": f"Department sales used {usage} tokens of 1k tokens ({percent}) today "
                                   "(Asia/Shanghai).",
                    "usage": f"{usage} tokens", "limit": "1k tokens", "percent": percent}}

    tests = {"evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [dept("sales", "0x929 900x26 1000x10 1200x300")],
        "alert_rule_test": [
            {"eval_time": "15h59m", "alertname": "LLMDepartmentTokenBudget", "exp_alerts": [
                alert("critical", "1k", "100%"), alert("warning", "1k", "100%")]},
            {"eval_time": "16h5m", "alertname": "LLMDepartmentTokenBudget", "exp_alerts": []},
        ],
        "promql_expr_test": [
            {"expr": f'{day}{{department="sales"}}', "eval_time": "15h50m",
             "exp_samples": [{"labels": f'{day}{{department="sales"}}', "value": 900}]},
            {"expr": f'{day}{{department="sales"}}', "eval_time": "16h30m",
             "exp_samples": [{"labels": f'{day}{{department="sales"}}', "value": 200}]},
        ],
    }]}
    promtool_test(tmp_path, tests, quotas, today=date(1970, 1, 1))
