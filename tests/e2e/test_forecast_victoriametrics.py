"""The budget forecast rules on VictoriaMetrics' engine (MetricsQL), on a month of history: the
promtool test's departments imported into a real VictoriaMetrics, every recording rule of the
rendered file replayed there over the month at the hourly step (tests/support/victoria_replay.py),
then the forecasts read at the promtool test's times must equal Prometheus's."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from otel_tokens.ops.rules import render
from otel_tokens.quota.file import parse_quotas
from tests.support.binaries import require_binary
from tests.support.forecast_quotas import FORECAST_QUOTAS
from tests.support.victoria_replay import at, import_lines, replay, visible
from tests.support.victoria_stack import start_victoria

START = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp())
STEP = 900  # the promtool test's sample interval
HOUR = 3600


def _history() -> list[dict[str, Any]]:
    """The promtool forecast test's input series, in January 2026."""
    def dept(name: str, values: list[float], metric: str = "llm_quota_tokens_total") -> dict[str, Any]:
        currency = {"currency": "USD"} if metric == "llm_quota_cost_total" else {}
        labels = {"__name__": metric, "department": name, "user_id": "u", "instance": "app:9464", "job": "app",
                  **currency}
        times = [(START + i * STEP) * 1000 for i in range(len(values))]
        return {"metric": labels, "values": values, "timestamps": times}

    spike = 10 * 96 + 10 * 4
    return [dept("hot", [5 * i for i in range(3301)]), dept("steady", [2 * i for i in range(3301)]),
            dept("spike", [i if i < spike else i + 2999 for i in range(3301)]),
            dept("quiet", [20 * i for i in range(401)]),
            dept("ops", [round(0.05 * i, 10) for i in range(3301)], "llm_quota_cost_total")]


def _at(url: str, promql: str, t: float) -> dict[str, float]:
    return at(url, promql, t, "department")


def test_forecasts_on_victoriametrics_equal_prometheus(tmp_path):
    victoria = require_binary("victoria-metrics")
    url, process = start_victoria(tmp_path, victoria, retention="100y")
    try:
        history = _history()
        import_lines(url, history)
        visible(url, '{__name__=~"llm_quota_tokens_total|llm_quota_cost_total"}', len(history), START - HOUR)
        replay(url, render(parse_quotas(FORECAST_QUOTAS, "q")), START, START + 33 * 86400, HOUR)
        day = 86400
        # the promtool test's numbers (tests/e2e/test_quota_rules_promtool.py), here on January 2026
        assert _at(url, "llm_quota:department_tokens:burn_rate", START + 10 * day + 12 * HOUR) == {
            "hot": 20, "spike": 4, "steady": 8}
        ratio = _at(url, "llm_quota:department_tokens:forecast_ratio", START + 10 * day + 12 * HOUR)
        assert ratio.keys() == {"hot", "quiet", "spike", "steady"}
        assert ratio["hot"] == pytest.approx(1.488) and ratio["steady"] == pytest.approx(0.5952)
        assert ratio["spike"] == pytest.approx((2999 + 252 * 4 + 492 * 4) / 10000)
        exhaustion = _at(url, "llm_quota:department_tokens:exhaustion_time", START + 10 * day + 12 * HOUR)
        assert exhaustion["hot"] == START + 20 * day + 20 * HOUR  # Jan 21 20:00, as in Prometheus
        cost = _at(url, "llm_quota:department_cost:forecast_ratio", START + 10 * day + 12 * HOUR)
        assert cost == {"ops": pytest.approx(1.488)}
        # quiet: no traffic for 8 hours burns 0 and never runs out
        assert _at(url, 'llm_quota:department_tokens:burn_rate{department="quiet"}', START + 4 * day + 12 * HOUR) == {
            "quiet": 0}
        assert _at(url, 'llm_quota:department_tokens:exhaustion_time{department="quiet"}',
                   START + 4 * day + 12 * HOUR) == {}
        # February: hot on course again from its own month (960 so far + 20 an hour for 624 hours)
        feb = _at(url, "llm_quota:department_tokens:forecast_ratio", START + 33 * day)
        assert feb["hot"] == pytest.approx(1.344)
        # the alert's condition, as vmalert evaluates it
        (alert,) = [r for g in render(parse_quotas(FORECAST_QUOTAS, "q"))["groups"] for r in g["rules"]
                    if r.get("alert") == "LLMDepartmentBudgetForecast" and r["labels"]["quota"] == "tokens"]
        assert set(_at(url, alert["expr"], START + 10 * day + 12 * HOUR)) == {"hot"}
    finally:
        process.terminate()
        process.wait(timeout=30)
