"""The digest in the organization's zone, against the real Prometheus holding weeks of imported counters and the
rules of a quota file in Asia/Shanghai (users: a day and a month; departments: a month and a year): `--window
yesterday` is the local day before, compared with the day before it; `today` runs from local midnight; the quota
table has every window of every principal with its exact usage so far and its reset at local midnight; the zone
comes from --timezone or from the quota file alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from otel_tokens.ops.rules import render_text
from otel_tokens.quota.calendar import WINDOWS, window_end, window_start
from otel_tokens.quota.file import parse_quotas
from tests.support.binaries import require_binary
from tests.support.prometheus_stack import query, start_prometheus
from tests.support.usage_history import STEP, History, every

ROOT = Path(__file__).resolve().parents[2]
ZONE = "Asia/Shanghai"
HOUR, DAY = 3600, 86400
PRICE = 1e-4  # per token
BURN = 5.0  # USD an hour: support's burn rate
QUOTAS = {"timezone": ZONE,
          "users": {"default": {"day": {"tokens": 5000}, "month": {"tokens": 100000}},
                    "overrides": {"alice": {"day": {"tokens": 8000}}}},
          "departments": {"default": {"month": {"cost": 50}, "year": {"cost": 500}},
                          "overrides": {"support": {"year": {"cost": 1200}}}}}
SCOPES = (("user", "users", "user_id"), ("department", "departments", "department"))


def _history(now: int) -> tuple[History, int]:
    h, end = History(), (now - 10 * 60) // STEP * STEP
    # nine days: yesterday, the day before, a part of the month and the year (promtool takes 5 s a day to import)
    people = (("alice", "support", end - 9 * DAY, end, 10), ("bob", "research", end - 30 * HOUR, end, 7),
              ("carol", "support", end - 9 * DAY, end - 3 * DAY, 3))
    for user, department, first, last, per_scrape in people:
        labels = {"user_id": user, "department": department, "gen_ai_request_model": "gpt-4o",
                  "gen_ai_provider_name": "openai", "gen_ai_operation_name": "chat", "llm_usage_source": "reported",
                  "job": "app", "instance": f"app:{user}"}
        times = list(every(first, last))
        for token_type, amount in (("input", per_scrape), ("output", 1)):
            h.process("llm_token_usage", {**labels, "gen_ai_token_type": token_type}, times, amount)
            h.process("llm_cost", {**labels, "gen_ai_token_type": token_type, "currency": "USD"}, times,
                      amount * PRICE)
    return h, end


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    prometheus, promtool = require_binary("prometheus"), require_binary("promtool")
    tmp = tmp_path_factory.mktemp("report-zone")
    h, _ = _history(int(time.time()))
    h.write(tmp / "history.om")
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(tmp / "history.om"),
                    str(tmp / "prom-data")], check=True, capture_output=True)
    (tmp / "quotas.yaml").write_text(yaml.safe_dump(QUOTAS))
    (tmp / "rules").mkdir()
    (tmp / "rules" / "quotas.yml").write_text(render_text(parse_quotas(QUOTAS, "q")))
    # support's burn rate, which the quota rules compute from hourly buckets this imported history has none of
    (tmp / "rules" / "burn.yml").write_text(yaml.safe_dump({"groups": [{"name": "burn", "rules": [
        {"record": "llm_quota:department_cost:burn_rate", "expr": f"vector({BURN})",
         "labels": {"department": "support"}}]}]}))
    url, process = start_prometheus(tmp, prometheus, [], str(tmp / "rules" / "*.yml"), retention="400d")
    try:
        deadline = time.monotonic() + 60
        limits = ("llm_quota:user_tokens:day_limit_default", "llm_quota:department_cost:year_limit_default",
                  "llm_quota:department_cost:burn_rate")
        while not all(query(url, name) for name in limits):  # the rules' first evaluation
            assert time.monotonic() < deadline, "the quota rules recorded no limit"
            time.sleep(0.5)
        at = int(time.time()) + 1  # a whole second after the limits' first sample (before it they are not there)
        time.sleep(max(0.0, at - time.time()))
        yield {"url": url, "history": h, "at": at, "quota_file": tmp / "quotas.yaml"}
    finally:
        process.terminate()
        process.wait(timeout=30)


def report(stack: dict[str, Any], *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "report", "--prometheus", stack["url"],
                          "--at", str(stack["at"]), *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if "json" in args else {"text": out.stdout}


def _tokens(h: History, start: float, end: float, by: str = "user_id") -> dict[str, float]:
    return h.truth("llm_token_usage", start, end, by)


def _iso(t: float) -> str:
    return datetime.utcfromtimestamp(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_yesterday_is_the_local_day_before_against_the_day_before_it(stack):
    h, at = stack["history"], stack["at"]
    data = report(stack, "--window", "yesterday", "--timezone", ZONE, "--format", "json")
    midnight = window_start("day", at, ZONE)
    start, before = window_start("day", midnight - 1, ZONE), window_start("day", midnight - DAY - 1, ZONE)
    assert datetime.fromtimestamp(midnight, ZoneInfo(ZONE)).strftime("%H:%M:%S") == "00:00:00"
    assert (data["window"]["start_unix"], data["window"]["end_unix"]) == (start, midnight)
    assert (data["previous_window"]["start_unix"], data["previous_window"]["end_unix"]) == (before, start)
    assert data["timezone"] == ZONE
    assert data["totals"]["total_tokens"] == sum(_tokens(h, start, midnight).values())
    assert data["totals"]["previous"]["total_tokens"] == sum(_tokens(h, before, start).values())
    assert {r["name"]: r["total_tokens"] for r in data["users"]} == _tokens(h, start, midnight)
    day = datetime.fromtimestamp(start, ZoneInfo(ZONE)).strftime("%Y-%m-%d")
    assert data["headline"].startswith(f"yesterday ({day}, {ZONE}): ")
    assert "on the day before" in data["headline"]


def test_today_runs_from_local_midnight_against_the_same_hours_yesterday(stack):
    h, at = stack["history"], stack["at"]
    midnight = window_start("day", at, ZONE)
    if not sum(_tokens(h, midnight, at).values()):  # run in the first minutes after midnight in Shanghai: the
        # history (it ends 10 to 15 minutes ago) has nothing today, which the report must say rather than invent
        out = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "report", "--prometheus", stack["url"],
                              "--at", str(at), "--window", "today", "--timezone", ZONE, "--format", "json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and "no LLM traffic in the today ending" in out.stderr, out.stderr
        return
    data = report(stack, "--window", "today", "--timezone", ZONE, "--format", "json")
    yesterday = window_start("day", midnight - 1, ZONE)
    assert (data["window"]["start_unix"], data["window"]["end_unix"]) == (midnight, at)
    assert data["previous_window"]["start_unix"] == yesterday
    assert data["previous_window"]["end_unix"] == yesterday + (at - midnight)
    assert data["totals"]["total_tokens"] == sum(_tokens(h, midnight, at).values())
    assert data["totals"]["previous"]["total_tokens"] == sum(_tokens(h, yesterday, yesterday + at - midnight).values())


def _expected_quotas(h: History, at: int) -> list[dict[str, Any]]:
    rows = []
    for principal, section, label in SCOPES:
        limits = QUOTAS[section]
        for window in WINDOWS:
            for kind in ("tokens", "cost"):
                default = limits["default"].get(window, {}).get(kind)
                overrides = {n: v[window][kind] for n, v in limits["overrides"].items()
                             if kind in v.get(window, {})}
                if default is None and not overrides:
                    continue
                start = window_start(window, at, ZONE)
                metric = "llm_token_usage" if kind == "tokens" else "llm_cost"
                usage = h.truth(metric, start, at, label)
                who = set(overrides) | ({n for n, v in usage.items() if v > 0} if default is not None else set())
                rows += sorted(({"principal": principal, "name": n, "quota": kind, "window": window,
                                 "usage": usage.get(n, 0.0), "limit": overrides.get(n, default),
                                 "resets_at": _iso(window_end(window, at, ZONE))} for n in who),
                               key=lambda r: (-r["usage"] / r["limit"], r["name"]))
    return rows


def test_the_quota_table_has_every_window_with_its_exact_use_and_local_reset(stack):
    h, at = stack["history"], stack["at"]
    data = report(stack, "--window", "yesterday", "--timezone", ZONE, "--format", "json")
    got = [{k: q[k] for k in ("principal", "name", "quota", "window", "usage", "limit", "resets_at")}
           for q in data["quotas"]]
    want = _expected_quotas(h, at)
    assert [(q["principal"], q["window"], q["quota"], q["name"]) for q in got] == [
        (q["principal"], q["window"], q["quota"], q["name"]) for q in want]
    assert {(q["principal"], q["window"]) for q in got} == {("user", "day"), ("user", "month"),
                                                              ("department", "month"), ("department", "year")}
    for g, w in zip(got, want, strict=True):
        assert g["usage"] == pytest.approx(w["usage"], rel=1e-9), (g, w)
        assert (g["limit"], g["resets_at"]) == (w["limit"], w["resets_at"]), (g, w)
    for q in data["quotas"]:  # every reset is a local midnight
        local = datetime.fromisoformat(q["resets_at"].replace("Z", "+00:00")).astimezone(ZoneInfo(ZONE))
        assert local.strftime("%H:%M:%S") == "00:00:00", q
    markdown = report(stack, "--window", "yesterday", "--timezone", ZONE, "--format", "markdown")["text"]
    assert "| user | quota | window | usage | limit | used | resets | at end |" in markdown
    tomorrow = datetime.fromtimestamp(window_end("day", at, ZONE), ZoneInfo(ZONE)).strftime("%Y-%m-%d")
    assert "| alice | tokens | today | " in markdown and f"| {tomorrow} 00:00 +08:00 |" in markdown


def test_the_quota_files_zone_is_the_digests_zone(stack):
    explicit = report(stack, "--window", "yesterday", "--timezone", ZONE, "--format", "json")
    from_file = report(stack, "--window", "yesterday", "--quota-file", str(stack["quota_file"]), "--format", "json")
    from_env = report(stack, "--window", "yesterday", "--format", "json",
                      env={"OTEL_TOKENS_QUOTA_FILE": str(stack["quota_file"])})
    assert from_file == explicit == from_env
    utc = report(stack, "--window", "yesterday", "--timezone", "UTC", "--format", "json")
    assert utc["window"]["end_unix"] == window_start("day", stack["at"], "UTC") != explicit["window"]["end_unix"]


def test_the_month_and_the_year_are_projected_to_their_local_end(stack):
    at = stack["at"]
    data = report(stack, "--window", "yesterday", "--timezone", ZONE, "--format", "json")
    projected = {(q["name"], q["window"]): q for q in data["quotas"] if q["principal"] == "department"}
    assert set(projected) == {(d, w) for d in ("support", "research") for w in ("month", "year")}
    for window in ("month", "year"):
        q, end = projected["support", window], window_end(window, at, ZONE)
        assert q["burn_rate_per_hour"] == BURN
        ratio = (q["usage"] + BURN * (end - at) / 3600) / q["limit"]
        assert q["window_end_percent"] == pytest.approx(100 * ratio, rel=1e-9)
        assert q["month_end_percent"] == (q["window_end_percent"] if window == "month" else None)
        runs_out = round((at + 3600 * (q["limit"] - q["usage"]) / BURN) / 60) * 60
        assert q["runs_out_at"] == (_iso(runs_out) if ratio >= 1 else None), q  # no later than the window's end
        assert projected["research", window]["window_end_percent"] is None  # no burn rate recorded
    text = report(stack, "--window", "yesterday", "--timezone", ZONE, "--format", "markdown")["text"]
    when = datetime.fromtimestamp(round((at + 3600 * (projected["support", "year"]["limit"]
                                                      - projected["support", "year"]["usage"]) / BURN) / 60) * 60,
                                  ZoneInfo(ZONE)).strftime("%Y-%m-%d")
    assert f"department support runs out of its yearly cost budget on {when} at the current rate" in text


@pytest.mark.parametrize(("args", "message"), [
    (["--window", "yesterdy"], "bad window 'yesterdy': use a Prometheus duration such as 24h, 7d, 90m or 1h30m, "
                               "or today / yesterday (local days)"),
    (["--window", "yesterday", "--timezone", "Asia/Shangai"], "bad --timezone: "),
])
def test_a_bad_window_or_zone_is_a_one_line_usage_error(args, message):
    out = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "report", "--prometheus", "http://127.0.0.1:9",
                          *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"otel-tokens report: {message}"), out.stderr
