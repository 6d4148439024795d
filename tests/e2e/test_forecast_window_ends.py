"""The forecasts' hours left to the end of the local month and year (ops/forecast_rules.hours_left), evaluated by
the real Prometheus and the real VictoriaMetrics at times around local month and year ends, in whole-hour,
half-hour and DST zones, against Python's calendar: the two engines' PromQL is the contract (VictoriaMetrics
1.79 has no day_of_year, so the year's end is computed from the year itself)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from otel_tokens.ops.forecast_rules import hours_left
from otel_tokens.ops.local_time import LocalTime
from otel_tokens.quota.calendar import MONTH, YEAR
from tests.support.binaries import require_binary
from tests.support.prometheus_stack import start_prometheus
from tests.support.victoria_stack import start_victoria

TODAY = date(2026, 12, 7)  # the offsets are rendered for 2025 to 2029
ZONES = ("UTC", "Asia/Shanghai", "Asia/Kolkata", "America/New_York")
LOCAL_TIMES = [datetime(2026, 12, 31, 23, 0), datetime(2027, 1, 1, 0, 0), datetime(2027, 1, 1, 0, 30),
               datetime(2027, 12, 31, 23, 59, 59), datetime(2028, 2, 28, 12, 0), datetime(2028, 2, 29, 23, 0),
               datetime(2027, 11, 30, 23, 30), datetime(2027, 12, 15, 8, 0)]


def _truth(local: datetime, window: str) -> float:
    """Wall-clock hours from the local time to the next local month or year (what the rules compute: a DST change
    ahead in the window makes it an hour off the elapsed time, which none of these times has)."""
    if window == YEAR:
        end = datetime(local.year + 1, 1, 1)
    else:
        end = datetime(local.year + local.month // 12, local.month % 12 + 1, 1)
    return (end - local).total_seconds() / 3600


def _query(url: str, promql: str, t: float) -> float:
    params = urllib.parse.urlencode({"query": promql, "time": str(t)})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=30) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return float(body["data"]["result"][0]["value"][1])


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("engines")
    (tmp / "prometheus").mkdir()
    (tmp / "victoria").mkdir()
    prometheus, p_process = start_prometheus(tmp / "prometheus", require_binary("prometheus"), [])
    victoria, v_process = start_victoria(tmp / "victoria", require_binary("victoria-metrics"))
    try:
        yield {"Prometheus": prometheus, "VictoriaMetrics": victoria}
    finally:
        for process in (p_process, v_process):
            process.terminate()
            process.wait(timeout=30)


@pytest.mark.parametrize("zone", ZONES)
def test_hours_left_to_the_local_month_and_year_end(engines, zone):
    local = LocalTime.of(zone, TODAY)
    for engine, url in engines.items():
        for window in (MONTH, YEAR):
            expr = f"vector({hours_left(local, window)})"
            for moment in LOCAL_TIMES:
                t = moment.replace(tzinfo=ZoneInfo(zone)).timestamp()
                assert _query(url, expr, t) == pytest.approx(_truth(moment, window), abs=1e-6), (engine, window, moment)
