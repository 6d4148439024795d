"""Grants in the rendered rules, run by the real promtool: a grant lifts the limit from its start (the critical
alert resolves), and at its end the alert fires again with no re-render; a reset holds until the window's end;
the alerts' texts and the `limit` series show the granted limit."""

from __future__ import annotations

from otel_tokens.quota.grants.model import RESET, Grant
from tests.support.promtool_rules import annotations, dept, promtool_test
from tests.support.promtool_series import tokens

QUOTAS = {"users": {"default": {"24h": {"tokens": 1000}},
                    "overrides": {"cy": {"24h": {"tokens": 100000}, "day": {"tokens": 1000}}}},
          "departments": {"default": {"tokens": 100000}}}
MINUTE = 60


def grant(gid: str, user: str, window: str, amount: float, start_m: float, until_m: float, kind: str = "grant"
          ) -> Grant:
    return Grant(gid, "user", user, window, amount, None, start_m * MINUTE, until_m * MINUTE, "test", "ops", 0.0,
                 kind=kind)


def fired(user: str, usage: str, limit: str, percent: str, window: str = "24h") -> list[dict]:
    out = []
    for severity in ("critical", "warning"):
        texts = annotations("user", user, "tokens", severity, usage, limit, percent)
        if window == "day":
            verb = "is nearing" if severity == "warning" else "has reached"
            texts |= {"summary": f"User {user} {verb} the token quota of the day ({percent})",
                      "description": f"User {user} used {usage} tokens of {limit} tokens ({percent}) today (UTC)."}
        out.append({"exp_labels": {"user_id": user, "severity": severity, "window": window, "quota": "tokens"},
                    "exp_annotations": texts})
    return out


def ordered(alerts: list[dict]) -> list[dict]:
    return sorted(alerts, key=lambda a: (a["exp_labels"]["severity"], a["exp_labels"]["user_id"],
                                         a["exp_labels"]["window"]))


def test_a_grant_resolves_the_alert_and_its_end_brings_it_back_without_a_re_render(tmp_path):
    grants = [grant("g-000000000001", "ann", "24h", 500, 20, 60),  # 20 min to 60 min: 1,500 tokens
              grant("g-000000000002", "bo", "24h", 300, 20, 60), grant("g-000000000003", "bo", "24h", 300, 30, 60),
              grant("g-000000000005", "dee", "24h", 200, 20, 60),  # 1,200: dee reaches it with the grant
              # a reset of the day's 1,000 until the day ends (promtool's day 1 ends at 1440 m, UTC)
              grant("g-000000000004", "cy", "day", 1000, 20, 1440, RESET),
              grant("g-000000000006", "ann", "24h", 999, 10, 15)]  # ended before the test looks
    series = [tokens("ann", "0+100x10 1000x1500"), tokens("bo", "0+100x10 1000x1500"),
              tokens("dee", "0+100x12 1200x1500"), tokens("cy", "0+100x10 1000x1430 1000+100x10 2000x100")]
    over = fired("ann", "1k", "1k", "100%") + fired("bo", "1k", "1k", "100%")
    tests = {"evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            {"eval_time": "17m", "alertname": "LLMUserTokenQuota",
             "exp_alerts": ordered(over + fired("dee", "1.2k", "1k", "120%") + fired("cy", "1k", "1k", "100%", "day"))},
            # cy's day reset from 20 m; dee at her granted 1,200: the critical and the warning say so
            {"eval_time": "25m", "alertname": "LLMUserTokenQuota", "exp_alerts": fired("dee", "1.2k", "1.2k", "100%")},
            # ann 1,000 of 1,500 (67 %), bo 1,000 of 1,600 (63 %): nothing
            {"eval_time": "40m", "alertname": "LLMUserTokenQuota", "exp_alerts": fired("dee", "1.2k", "1.2k", "100%")},
            # the grants ended at 60 m: ann, bo and dee are over again, and nothing was rendered since
            {"eval_time": "62m", "alertname": "LLMUserTokenQuota",
             "exp_alerts": ordered(over + fired("dee", "1.2k", "1k", "120%"))},
            # the next day: cy's reset ended with the day, and 1,000 more tokens today fire the day's critical again
            {"eval_time": "1455m", "alertname": "LLMUserTokenQuota",
             "exp_alerts": fired("cy", "1k", "1k", "100%", "day")},
        ],
        "promql_expr_test": [
            {"expr": "llm_quota:user_tokens:limit_granted", "eval_time": "40m",
             "exp_samples": [{"labels": 'llm_quota:user_tokens:limit_granted{user_id="ann"}', "value": 1500},
                             {"labels": 'llm_quota:user_tokens:limit_granted{user_id="bo"}', "value": 1600},
                             {"labels": 'llm_quota:user_tokens:limit_granted{user_id="dee"}', "value": 1200}]},
            {"expr": "llm_quota:user_tokens:day_limit_granted", "eval_time": "40m",
             "exp_samples": [{"labels": 'llm_quota:user_tokens:day_limit_granted{user_id="cy"}', "value": 2000}]},
            {"expr": 'llm_quota:user_tokens:limit{user_id="ann"}', "eval_time": "40m",
             "exp_samples": [{"labels": 'llm_quota:user_tokens:limit{user_id="ann"}', "value": 1500}]},
            {"expr": 'llm_quota:user_tokens:limit{user_id="ann"}', "eval_time": "65m",
             "exp_samples": [{"labels": 'llm_quota:user_tokens:limit{user_id="ann"}', "value": 1000}]},
            {"expr": "llm_quota:user_tokens:limit_granted", "eval_time": "62m", "exp_samples": []},
            {"expr": 'llm_quota:user_tokens:grant{user_id=~"ann|bo"}', "eval_time": "25m",
             "exp_samples": [{"labels": 'llm_quota:user_tokens:grant{user_id="ann",grant="g-000000000001"}',
                              "value": 500},
                             {"labels": 'llm_quota:user_tokens:grant{user_id="bo",grant="g-000000000002"}',
                              "value": 300}]},
        ],
    }]}
    promtool_test(tmp_path, tests, QUOTAS, grants=grants)


def test_a_departments_month_grant_on_the_calendar_path(tmp_path):
    """The departments' limits are recorded every evaluation (not once a minute as a rolling scope's): the `limit`
    series itself carries the grant, and the alert's text reads it."""
    quotas = {"users": {"default": {"24h": {"tokens": 10**9}}},
              "departments": {"default": {"tokens": 10000}}}
    grants = [Grant("g-00000000000a", "department", "support", "month", 5000, None, 100 * MINUTE, 160 * MINUTE,
                    "t", "ops", 0.0)]  # the month is summed from hourly buckets: after the first hour's
    series = [dept("support", "0+1000x10 10000x300"), dept("sales", "0+100x10 1000x300")]

    def critical(limit: str, percent: str) -> list[dict]:
        return [{"exp_labels": {"department": "support", "severity": s, "window": "month", "quota": "tokens"},
                 "exp_annotations": annotations("department", "support", "tokens", s, "10k", limit, percent)}
                for s in ("critical", "warning")]

    tests = {"evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            {"eval_time": "95m", "alertname": "LLMDepartmentTokenBudget", "exp_alerts": critical("10k", "100%")},
            {"eval_time": "130m", "alertname": "LLMDepartmentTokenBudget", "exp_alerts": []},
            {"eval_time": "162m", "alertname": "LLMDepartmentTokenBudget", "exp_alerts": critical("10k", "100%")},
        ],
        "promql_expr_test": [
            {"expr": "llm_quota:department_tokens:limit", "eval_time": "130m",
             "exp_samples": [{"labels": 'llm_quota:department_tokens:limit{department="sales"}', "value": 10000},
                             {"labels": 'llm_quota:department_tokens:limit{department="support"}', "value": 15000}]},
            {"expr": 'llm_quota:department_tokens:limit{department="support"}', "eval_time": "165m",
             "exp_samples": [{"labels": 'llm_quota:department_tokens:limit{department="support"}', "value": 10000}]},
        ],
    }]}
    promtool_test(tmp_path, tests, quotas, grants=grants)
