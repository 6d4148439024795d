"""The week, month and year windows on VictoriaMetrics' engine (MetricsQL): the promtool calendar tests'
history (tests/e2e/test_quota_rules_calendar.py, 1970 there, 2015 here: both begin on a Thursday, neither is a
leap year, Asia/Shanghai has kept UTC+8 since; a year wholly in the past: VictoriaMetrics drops samples from
the future) imported into a real VictoriaMetrics, the rendered rules replayed
daily at 00:00 UTC as promtool evaluated them, and the same numbers read back at the same times."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from otel_tokens.ops.rules import render
from otel_tokens.quota.file import parse_quotas
from tests.support.binaries import require_binary
from tests.support.victoria_replay import at, import_lines, replay, series_line, visible
from tests.support.victoria_stack import start_victoria

START = int(datetime(2015, 1, 1, tzinfo=timezone.utc).timestamp())
HOUR, DAY = 3600, 86400
QUOTAS = {"timezone": "Asia/Shanghai",
          "users": {"default": {"month": {"tokens": 1200}}},
          "departments": {"default": {"year": {"tokens": 700}, "week": {"tokens": 1000}}}}


def _counter(labels: dict[str, str], steps: dict[int, float], days: int) -> dict:
    """Hourly samples of a counter that grows by steps[d] at 00:00 UTC of day d (in the hour before it)."""
    values, total = [], 0.0
    for hour in range(days * 24):
        total += steps.get(hour // 24, 0) if hour % 24 == 0 else 0
        values.append(total)
    return series_line({"instance": "app:9464", "job": "app", "user_id": "u", "department": "d", **labels}, START,
                       HOUR, values)


def test_week_month_and_year_on_victoriametrics_equal_promtool(tmp_path):
    url, process = start_victoria(tmp_path, require_binary("victoria-metrics"), retention="100y")
    try:
        tokens = {"__name__": "llm_quota_tokens_total"}
        history = [_counter({**tokens, "department": "sales"}, {20: 300, 45: 200, 364: 100, 365: 400}, 367),
                   _counter({**tokens, "department": "research"}, {3: 900, 4: 50, 11: 70}, 13),
                   _counter({**tokens, "user_id": "li"}, {30: 1100}, 33)]
        import_lines(url, history)
        visible(url, "llm_quota_tokens_total", len(history), START - HOUR)
        rules = render(parse_quotas(QUOTAS, "q"), today=date(2015, 1, 1))
        replay(url, rules, START, START + 366 * DAY, DAY)

        def dept(expr: str, day: int) -> dict[str, float]:
            return at(url, expr, START + day * DAY, "department")

        year = "llm_quota:department_tokens:year"
        assert dept(f'{year}{{department="sales"}}', 31) == {"sales": 300}  # January, from its recorded total
        assert dept(f'{year}{{department="sales"}}', 200) == {"sales": 500}
        assert dept('llm_quota:department_tokens:year_ratio{department="sales"}', 364) == {
            "sales": pytest.approx(600 / 700)}
        assert dept(f'{year}{{department="sales"}}', 365) == {"sales": 400}  # 1 January, local: a new year
        closed = 'max_over_time(llm_quota:department_tokens:closed_month{department="sales"}[370d]) > 0'
        assert at(url, closed, START + 366 * DAY, "month") == {"201501": 300, "201502": 200, "201512": 100}
        week = 'llm_quota:department_tokens:week_ratio{department="research"}'
        assert [dept(week, d) for d in (3, 4, 10, 11)] == [
            {"research": pytest.approx(0.9)}, {"research": pytest.approx(0.05)}, {"research": pytest.approx(0.05)},
            {"research": pytest.approx(0.07)}]
        month = 'llm_quota:user_tokens:month_ratio{user_id="li"}'
        assert at(url, month, START + 30 * DAY, "user_id") == {"li": pytest.approx(1100 / 1200)}
        assert at(url, month, START + 31 * DAY, "user_id") == {"li": 0}  # 1 February, local: January is gone
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_month_in_asia_kolkata_on_half_hour_buckets(tmp_path):
    """Asia/Kolkata (+05:30): February 2015 began at 18:30 UTC on Jan 31. 500 tokens in the half hour before
    (Jan 31 23:30-24:00 local), 300 in the half hour after, 100 on Jan 10: replayed every 30 minutes, the month,
    the previous month, the year (January's stand-in, then its recorded total) and the forecast's inputs."""
    url, process = start_victoria(tmp_path, require_binary("victoria-metrics"), retention="100y")
    try:
        half = 1800
        steps = {(9 * DAY + 12 * HOUR) // half: 100, (30 * DAY + 18 * HOUR + 1800) // half: 500,
                 (30 * DAY + 19 * HOUR) // half: 300}
        values, total = [], 0.0
        for i in range(40 * DAY // half):
            total += steps.get(i, 0)
            values.append(total)
        history = [series_line({"__name__": "llm_quota_tokens_total", "department": "sales", "user_id": "u",
                                "instance": "app:9464", "job": "app"}, START, half, values)]
        import_lines(url, history)
        visible(url, "llm_quota_tokens_total", 1, START - HOUR)
        quotas = {"timezone": "Asia/Kolkata",
                  "departments": {"default": {"month": {"tokens": 1000}, "year": {"tokens": 5000}}}}
        replay(url, render(parse_quotas(quotas, "q"), today=date(2015, 1, 1)), START, START + 33 * DAY, half)

        def dept(expr: str, when: float) -> dict[str, float]:
            return at(url, expr, when, "department")

        turned = START + 30 * DAY + 18 * HOUR + 1800  # 00:00 local, Feb 1
        assert dept('llm_quota:department_tokens:ratio{department="sales"}', turned - half) == {
            "sales": pytest.approx(0.1)}  # January's last half hour is not closed yet
        assert dept('llm_quota:department_tokens:ratio{department="sales"}', turned + half) == {
            "sales": pytest.approx(0.3)}
        assert dept('llm_quota:department_tokens:previous_month{department="sales"}', turned + half) == {"sales": 600}
        assert dept('llm_quota:department_tokens:year{department="sales"}', turned + half) == {"sales": 900}
        assert dept('llm_quota:department_tokens:year{department="sales"}', turned + DAY) == {"sales": 900}
        # recorded by the computation at 00:00 UTC (05:30 local), stamped then (read a second later: VictoriaMetrics
        # leaves out a lone sample stamped at the query's own second)
        assert dept('llm_quota:department_tokens:closed_month{department="sales"}', START + 31 * DAY + 1) == {
            "sales": 600}
        assert dept('llm_quota:department_tokens:burn_rate{department="sales"}', turned + half).keys() == {"sales"}
    finally:
        process.terminate()
        process.wait(timeout=30)
