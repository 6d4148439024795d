"""A user's calendar day in the rules, by the real promtool: local midnight in Asia/Shanghai (16:00 UTC), the
last minutes of the day before it, the rolling 24 h beside it. promtool starts at 1970-01-01 00:00 UTC
(08:00 in Shanghai): the offsets are rendered for 1970."""

from __future__ import annotations

from datetime import date

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
              tokens("big", "0x971 4500x300")]
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
            {"expr": 'llm_quota:user_tokens:day{user_id="li"}', "eval_time": "15h50m", "exp_samples": [_day("li", 900)]},
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
            {"expr": 'llm_quota:user_tokens:24h{user_id="li"}', "eval_time": "16h20m",
             "exp_samples": [{"labels": 'llm_quota:user_tokens:24h{user_id="li"}', "value": 1200}]},
            {"expr": 'llm_quota:user_tokens:day_limit{user_id=~"li|big"}', "eval_time": "16h30m", "exp_samples": [
                {"labels": 'llm_quota:user_tokens:day_limit{user_id="big"}', "value": 5000},
                {"labels": 'llm_quota:user_tokens:day_limit{user_id="li"}', "value": 1000}]},
        ],
    }]}
    promtool_test(tmp_path, tests, SHANGHAI, today=date(1970, 1, 1))
