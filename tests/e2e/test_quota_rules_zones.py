"""The departments' calendar month in the organization's time zone, by the real promtool: local midnight in
Asia/Shanghai, a DST change in Australia/Hobart, the hour of an upgrade, the month read back every 10 s,
the offsets' expiry alert. promtool starts at 1970-01-01: the offsets are rendered for 1970."""

from __future__ import annotations

import subprocess
from datetime import date

import pytest
import yaml

from otel_tokens.ops.rules import render_text
from otel_tokens.quota.file import parse_quotas
from tests.support.binaries import require_binary
from tests.support.promtool_rules import alert, annotations, dept, promtool_test


def _month(name: str, metric: str, values: list[float], month: str = "") -> list[dict]:
    labels = f',month="{month}"' if month else ""
    return [{"labels": f'llm_quota:department_tokens:{metric}{{department="{name}"{labels}}}', "value": v}
            for v in values]


def _around(day: int, hour: int) -> str:
    """500 tokens spent in the quarter hour from `hour`:30 UTC of day `day` (from 0), 300 more an hour later."""
    first = day * 96 + hour * 4 + 2
    return f"0x{first - 1} 500x3 800x200"


@pytest.mark.parametrize(("zone", "day", "hour", "turned", "after", "month"), [
    # UTC+8: February begins on Jan 31 at 16:00 UTC, 8 hours before UTC's
    ("Asia/Shanghai", 30, 15, "30d16h", "30d18h", "197002"),
    # Hobart left daylight time (+11 -> +10) on Mar 7 1970: March began at +11 (Feb 28 13:00 UTC); evaluated
    # after the change, each bucket keeps the offset of its own time (+10 would put March's first hour in February)
    ("Australia/Hobart", 58, 12, "58d13h", "66d", "197003"),
])
def test_department_months_begin_at_local_midnight_in_the_organizations_zone(tmp_path, zone, day, hour, turned,
                                                                              after, month):
    quotas = {"timezone": zone, "departments": {"default": {"tokens": 10000}, "overrides": {"sales": {"tokens": 300}}}}
    tests = {"evaluation_interval": "1h", "tests": [{
        "interval": "15m",
        "input_series": [dept("sales", _around(day, hour))],
        "alert_rule_test": [{"eval_time": after, "alertname": "LLMDepartmentTokenBudget", "exp_alerts": [
            {**alert("department", "sales", "tokens", severity, "300", "300", "100%"),
             "exp_annotations": {**annotations("department", "sales", "tokens", severity, "300", "300", "100%"),
                                 "description": f"Department sales used 300 tokens of 300 tokens (100%) this "
                                                f"calendar month ({zone})."}}
            for severity in ("critical", "warning")]}],
        "promql_expr_test": [
            # local midnight: the new month has no complete bucket yet (the 500 of the old month's last hour is gone)
            {"expr": 'llm_quota:department_tokens:month{department="sales"}', "eval_time": turned, "exp_samples": []},
            {"expr": 'llm_quota:department_tokens:month{department="sales"}', "eval_time": after,
             "exp_samples": _month("sales", "month", [300], month)},
            {"expr": 'llm_quota:department_tokens:previous_month{department="sales"}', "eval_time": after,
             "exp_samples": _month("sales", "previous_month", [500])},
        ],
    }]}
    promtool_test(tmp_path, tests, quotas, today=date(1970, 1, 1))


def test_the_hour_of_an_upgrade_written_unlabelled_and_labelled_counts_once(tmp_path):
    """Buckets of a version before the months were labelled count in their UTC month; the hour in which the
    new rules were loaded is written both ways (before and after the reload), and counts once."""
    bucket = "llm_quota:department_tokens:1h"
    tests = {"evaluation_interval": "1h", "tests": [{
        "interval": "1h",
        "input_series": [{"series": f'{bucket}{{department="mixed"}}', "values": "_ 100 100 100 100 100"},
                         {"series": f'{bucket}{{department="mixed",month="197001"}}', "values": "_ _ _ _ _ 100"}],
        "promql_expr_test": [{"expr": 'llm_quota:department_tokens:month{department="mixed"}', "eval_time": "5h",
                              "exp_samples": _month("mixed", "month", [500], "197001")}],
    }]}
    promtool_test(tmp_path, tests)


def test_the_month_read_back_every_10_s_ends_at_local_midnight(tmp_path):
    """The month to date is recorded every few minutes and read back over 9 minutes (a late or restarted group
    resolves no alert), but only while its month is the current one: at local midnight the month before stops
    counting at once, not 9 minutes later. Here the recorded series itself is the input: January's 900 (Asia/
    Shanghai), written every 4 minutes until 23:56 local."""
    last = (30 * 24 * 60 + 15 * 60 + 56) // 4  # Jan 31 15:56 UTC = 23:56 in Shanghai
    quotas = {"timezone": "Asia/Shanghai", "departments": {"default": {"tokens": 1000}}}
    month = {"series": 'llm_quota:department_tokens:month{department="sales",month="197001"}',
             "values": f"900x{last}"}
    ratio = 'llm_quota:department_tokens:ratio{department="sales"}'
    tests = {"evaluation_interval": "1h", "tests": [{
        "interval": "4m",
        "input_series": [month],
        "promql_expr_test": [
            {"expr": ratio, "eval_time": "30d15h", "exp_samples": [{"labels": ratio, "value": 0.9}]},
            {"expr": ratio, "eval_time": "30d16h", "exp_samples": []},  # 00:00 local, 4 minutes after the last
        ],
    }]}
    promtool_test(tmp_path, tests, quotas, today=date(1970, 1, 1))


def test_the_zones_offsets_alert_a_month_before_they_run_out(tmp_path):
    promtool = require_binary("promtool")
    quotas = parse_quotas({"timezone": "Asia/Shanghai", "departments": {"default": {"tokens": 1}}}, "test quotas")
    rendered = render_text(quotas, today=date(1968, 6, 1))  # offsets until 1971-01-01
    assert "# Time zone Asia/Shanghai (tzdata " in rendered and "written out until 1971-01-01" in rendered
    groups = [g for g in yaml.safe_load(rendered)["groups"] if g["name"] == "llm_quota_calendar"]
    (tmp_path / "calendar.yml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "calendar.test.yml").write_text(yaml.safe_dump({
        "rule_files": ["calendar.yml"], "evaluation_interval": "1d", "tests": [{
        "interval": "1h", "input_series": [],
        "alert_rule_test": [
            {"eval_time": "334d", "alertname": "LLMQuotaRulesTimeZoneExpiring", "exp_alerts": []},
            {"eval_time": "336d", "alertname": "LLMQuotaRulesTimeZoneExpiring", "exp_alerts": [{
                "exp_labels": {"severity": "warning"}, "exp_annotations": groups[0]["rules"][0]["annotations"]}]},
        ]}]}))
    result = subprocess.run([promtool, "test", "rules", "calendar.test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_forecast_projects_to_the_end_of_the_local_month(tmp_path):
    """Asia/Shanghai, 20 tokens an hour: at 23:00 local on Jan 31 (15:00 UTC) January's 735 hours so far plus one
    hour left; at 01:00 local on Feb 1 (17:00 UTC) February's first hour plus 671 left (27 days and 23 hours), not
    the UTC month's."""
    quotas = {"timezone": "Asia/Shanghai", "departments": {"default": {"tokens": 10000}}}
    forecast = "llm_quota:department_tokens:forecast"
    tests = {"evaluation_interval": "1h", "tests": [{
        "interval": "15m",
        "input_series": [dept("hot", "0+5x3000")],
        "promql_expr_test": [
            {"expr": f'{forecast}{{department="hot"}}', "eval_time": "30d15h",
             "exp_samples": [{"labels": f'{forecast}{{department="hot"}}', "value": 735 * 20 + 20}]},
            {"expr": f'{forecast}{{department="hot"}}', "eval_time": "30d17h",
             "exp_samples": [{"labels": f'{forecast}{{department="hot"}}', "value": 20 + 20 * 671}]},
        ],
    }]}
    promtool_test(tmp_path, tests, quotas, today=date(1970, 1, 1))


def test_the_year_forecast_projects_to_the_local_new_year(tmp_path):
    """Asia/Shanghai, a year to date of 1000 tokens burning 2 an hour, by the rendered year-forecast rules: at 20:00
    local on Dec 31 1970 (12:00 UTC) 4 hours are left; at local midnight (16:00 UTC) all 8,760 of 1971; at 04:00
    local 8,756. The year's usage and the burn rate are input series here (their own rules are tested above and in
    test_quota_rules_calendar.py): a year of hourly evaluations is more than promtool's sample limit."""
    promtool = require_binary("promtool")
    quotas = {"timezone": "Asia/Shanghai", "departments": {"default": {"year": {"tokens": 1010}}}}
    rendered = yaml.safe_load(render_text(parse_quotas(quotas, "q"), today=date(1970, 1, 1)))
    wanted = ("year_forecast", "year_forecast_ratio", "year_exhaustion_time")
    rules = [r for g in rendered["groups"] for r in g["rules"]
             if str(r.get("record", "")).rsplit(":", 1)[-1] in wanted
             or r.get("alert") == "LLMDepartmentBudgetForecast"]
    assert [r.get("record", r.get("alert")) for r in rules] == [
        *(f"llm_quota:department_tokens:{w}" for w in wanted), "LLMDepartmentBudgetForecast"]
    (tmp_path / "forecast.yml").write_text(yaml.safe_dump({"groups": [{"name": "year", "rules": rules}]}))
    forecast, exhaustion = (f"llm_quota:department_tokens:{w}" for w in ("year_forecast", "year_exhaustion_time"))
    held = {"series": 'llm_quota:department_tokens:{}{{department="hot"}}', "values": "{}x9000"}
    series = [{"series": held["series"].format(name), "values": held["values"].format(value)}
              for name, value in (("year", 1000), ("burn_rate", 2), ("year_limit", 1010))]
    at_20, at_04 = 364 * 86400 + 12 * 3600, 364 * 86400 + 20 * 3600
    (tmp_path / "forecast.test.yml").write_text(yaml.safe_dump({
        "rule_files": ["forecast.yml"], "evaluation_interval": "4h", "tests": [{
            "interval": "1h", "input_series": series,
            "promql_expr_test": [
                *({"expr": f'{forecast}{{department="hot"}}', "eval_time": when,
                   "exp_samples": [{"labels": f'{forecast}{{department="hot"}}', "value": 1000 + 2 * left}]}
                  for when, left in (("364d12h", 4), ("364d16h", 8760), ("364d20h", 8756))),
                *({"expr": f'{exhaustion}{{department="hot"}}', "eval_time": when,
                   "exp_samples": [{"labels": f'{exhaustion}{{department="hot"}}', "value": t + 5 * 3600}]}
                  for when, t in (("364d12h", at_20), ("364d20h", at_04))),
            ],
            "alert_rule_test": [
                {"eval_time": "364d12h", "alertname": "LLMDepartmentBudgetForecast", "exp_alerts": []},
                {"eval_time": "364d20h", "alertname": "LLMDepartmentBudgetForecast", "exp_alerts": [{
                    "exp_labels": {"department": "hot", "severity": "warning", "window": "year", "quota": "tokens"},
                    "exp_annotations": {
                        "summary": "Department hot is on course to exhaust its yearly token budget on "
                                   "1971-01-01 01:00:00 +0000 UTC",
                        "description": "Department hot has used 1k tokens of 1.01k tokens this year (Asia/Shanghai); "
                                       "at its current rate (2 tokens an hour: the lower of the last 6 h's average "
                                       "and the median hour of the last 24 h) it reaches the budget on 1971-01-01 "
                                       "01:00:00 +0000 UTC and would end the year at 1833% of it.",
                        "exhaustion": "1971-01-01 01:00:00 +0000 UTC", "forecast": "18.51k tokens",
                        "burn_rate": "2 tokens per hour", "percent": "1833%"}}]},
            ],
        }]}))
    result = subprocess.run([promtool, "test", "rules", "forecast.test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
