"""Every query of every dashboard, against a real Prometheus that
scraped tests/support/dashboard_app.py (the real package: several users, departments, two tiny transformers models, an
OpenAI-style model with estimated counts, streams and errors, budget mode on a real Redis refusing one user by her
rate and concurrency limits), every query of every panel, variable and annotation
with its variables substituted the way Grafana does. The quota panels are compared with the limits of a quota file
rendered by otel_tokens.ops.rules.render_text (with grants in force: tests.support.grafana.GRANTED) and loaded into
that Prometheus.

Department month-to-date is built from hourly buckets aligned to the hour, which a Prometheus started seconds ago
cannot have: the app's first round of metrics is backfilled into the past hour (`promtool tsdb create-blocks-from
openmetrics`, the app's own exposition re-timestamped) and the rule file's hourly bucket rules are evaluated over it
with `promtool tsdb create-blocks-from rules`; the month and ratio series are then recorded live by Prometheus.
"""


import calendar
import json
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from otel_tokens import names
from otel_tokens.ops.rules import render, render_text
from otel_tokens.quota.file import Quotas, parse_quotas
from otel_tokens.quota.grants.model import apply
from otel_tokens.quota.vocabulary import BY_NAME
from tests.support.binaries import require_binary
from tests.support.dashboard_app import AT_THE_LIMIT, RATE_LIMITED, RATE_LIMITS, USERS
from tests.support.grafana import (
    APP,
    GRANTED,
    JOB,
    MODELS,
    QUOTAS,
    ROOT,
    _dashboards,
    _data_panels,
    _datasource,
    _headroom_targets,
    _label_values_parts,
    _queries,
    _quota_targets,
    _variable_query,
    grafana_regex,
    grants_in_force,
    interpolate,
    label_values,
    openmetrics,
    promql_names,
    query_names,
)
from tests.support.prometheus_stack import free_port, query, start_prometheus, stop_processes
from tests.support.quick_rules import quick_hourly_group
from tests.support.redis_server import RedisServer

APP_LABEL = BY_NAME["app"].label  # service_name


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


def _families(text: str) -> list[Any]:
    return list(text_string_to_metric_families(text))


def _totals(text: str, metric: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for family in _families(text):
        for sample in family.samples:
            if sample.name == metric and sample.labels.get(label):
                out[sample.labels[label]] += sample.value
    return dict(out)


def _wait(condition: Callable[[], Any], what: str, timeout: float = 40.0,
          show: Callable[[], Any] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {show()}" if show else ""))
        time.sleep(0.25)


def _month_buckets_available(now: float) -> bool:
    """Month-to-date counts whole hourly buckets of the current UTC month: none exists in a month's first hour."""
    t = time.gmtime(now)
    month_start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    return now >= month_start + 3600


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    prometheus = require_binary("prometheus")
    promtool = require_binary("promtool")
    tmp = tmp_path_factory.mktemp("dashboards")
    # A month-to-date bucket ends on the hour; crossing one mid-test would add a live bucket to the expectations
    # (test_quota_panels_agree_with_the_rendered_rules then leaves the departments out).
    if 3600 - time.time() % 3600 < 45:
        time.sleep(3600 - time.time() % 3600 + 2)
    processes: list[subprocess.Popen[Any]] = []
    redis = RedisServer().start()  # budget mode's store: the app's rate limits
    try:
        port = free_port()
        (tmp / "rate-limits.yaml").write_text(yaml.safe_dump(RATE_LIMITS))
        app = subprocess.Popen([sys.executable, "-m", "tests.support.dashboard_app", str(port), redis.url,
                                str(tmp / "rate-limits.yaml")], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=open(tmp / "app.log", "w"))
        processes.append(app)
        assert app.stdout is not None and app.stdin is not None
        assert app.stdout.readline().strip() == f"ready {port}", (tmp / "app.log").read_text()

        def run_round() -> str:
            assert app.stdin is not None and app.stdout is not None
            app.stdin.write("round\n")
            app.stdin.flush()
            assert app.stdout.readline().strip() == "done", (tmp / "app.log").read_text()
            return _get(f"http://127.0.0.1:{port}/metrics")

        first = run_round()

        # The first round, backfilled 58 to 25 minutes before the last full hour, as the series a scrape of the app
        # (job "app") makes: the hourly bucket that ends on that hour holds it. It ends more than the users' base
        # lookback (rollups.LOOKBACK 15m, offset 5m: 20 minutes) before any 5-minute boundary from that hour on: ending
        # at 20 minutes before, a run in the first 5 minutes of an hour (CI) found it as the users' base value (a closed
        # range) and their 24 h usage stayed at half the truth.
        now = time.time()
        hour = int(now // 3600 * 3600)
        target = f"127.0.0.1:{port}"
        data = tmp / "prom-data"
        (tmp / "history.om").write_text(
            openmetrics(first, {"job": JOB, "instance": target}, list(range(hour - 3480, hour - 1499, 60))))
        subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(tmp / "history.om"), str(data)],
                       check=True, capture_output=True)

        quota_file = tmp / "quotas.yaml"
        quota_file.write_text(yaml.safe_dump(QUOTAS))
        quotas = parse_quotas(QUOTAS, str(quota_file))
        rules = tmp / "rules"
        rules.mkdir()
        grants = grants_in_force(now)
        (rules / "quotas.yml").write_text(quick_hourly_group(render_text(quotas, for_="1s", grants=grants, now=now)))
        rule_glob = str(rules / "*.yml")
        url, prom = start_prometheus(tmp, prometheus, [target], rule_glob)
        processes.append(prom)

        # The rule file's own hourly bucket rules, evaluated over the backfilled hour (each writes its bucket in the
        # minute after the hour ends, so the backfill runs past it).
        buckets = [rule for group in render(quotas)["groups"] for rule in group["rules"]
                   if rule.get("record", "").endswith(":1h")]
        assert len(buckets) == 4  # departments' and apps' tokens and cost
        (tmp / "buckets.yml").write_text(yaml.safe_dump({"groups": [{"name": "buckets", "rules": buckets}]}))
        subprocess.run([promtool, "tsdb", "create-blocks-from", "rules", f"--start={hour - 3300}", f"--end={hour + 60}",
                        f"--url={url}", f"--output-dir={tmp / 'rule-blocks'}", "--eval-interval=60s",
                        str(tmp / "buckets.yml")], check=True, capture_output=True)
        stop_processes([prom])
        processes.remove(prom)
        for block in (tmp / "rule-blocks").iterdir():
            shutil.move(str(block), data / block.name)
        url, prom = start_prometheus(tmp, prometheus, [target], rule_glob)
        processes.append(prom)
        _wait(lambda: query(url, f'up{{job="{JOB}"}} == 1'), "a scrape of the app")

        last = run_round()  # live traffic: rates over the last minute
        tokens = _totals(last, names.PROM_LLM_TOKEN_USAGE, "user_id")
        _wait(lambda: {r["metric"]["user_id"]: float(r["value"][1])
                       for r in query(url, "llm_quota:user_tokens:24h")} == tokens, "the users' 24 h usage",
              timeout=90,  # the base the growth is counted from: the rollup group, once a minute at any phase
              show=lambda: ({r["metric"]["user_id"]: float(r["value"][1])
                             for r in query(url, "llm_quota:user_tokens:24h")}, tokens))
        # a user's limit series is written once a minute (the rollup group), after the user's first usage
        _wait(lambda: {r["metric"]["user_id"] for r in query(url, "llm_quota:user_tokens:limit")} >= set(tokens),
              "the users' limits", timeout=90)
        _wait(lambda: query(url, 'ALERTS{alertname="LLMUserTokenQuota", user_id="carol", severity="critical", '
                                 'alertstate="firing"}'), "carol's critical quota alert")
        months = _month_buckets_available(now)
        if months:
            _wait(lambda: query(url, "llm_quota:department_cost:ratio"), "the departments' month to date")
            _wait(lambda: query(url, "llm_quota:app_cost:ratio"), "the apps' month to date")
        _wait(lambda: query(url, "llm_quota:department_tokens:limit_granted"), "the department's granted limit")
        # the limits the panels show: the quota file's with the grants in force (all of them, through the test)
        yield {"url": url, "first": first, "last": last, "quotas": apply(quotas, grants, time.time())[0],
               "months": months, "hour": hour, "grants": grants}
    finally:
        stop_processes(processes)
        redis.close()


def _options(stack: dict[str, Any], dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """Each variable's options, resolved in order with the earlier ones at All."""
    options: dict[str, list[str]] = {}
    values: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        options[variable["name"]] = label_values(stack["url"], variable["definition"], values)
        values[variable["name"]] = variable["allValue"]
    return options


def _substitutions(dashboard: dict[str, Any], options: dict[str, list[str]]) -> list[tuple[str, dict[str, str]]]:
    variables = dashboard["templating"]["list"]
    all_value = {v["name"]: v["allValue"] for v in variables}
    out = [("All as allValue", all_value),
           ("All as every value", {n: grafana_regex(vals) for n, vals in options.items()})]
    for name, vals in options.items():
        for value in vals:
            out.append((f"{name}={value}", {**all_value, name: grafana_regex([value])}))
    out.append(("one of each", {"app": APP, "model": "tiny-gpt2", "department": "research", "user": "alice"}))
    return out
def test_variables_list_what_the_app_produced(stack: dict[str, Any]) -> None:
    for dashboard in _dashboards().values():
        options = _options(stack, dashboard)
        assert options == {"app": [APP], "model": sorted(MODELS),
                           "department": sorted({d for _, d, _ in USERS}),
                           "user": sorted({u for u, _, _ in USERS} | {RATE_LIMITED[0], AT_THE_LIMIT[0]})}, \
            dashboard["title"]
        values = {v["name"]: v["allValue"] for v in dashboard["templating"]["list"]}
        assert label_values(stack["url"], dashboard["templating"]["list"][3]["definition"],
                             {**values, "department": "research"}) == ["alice", "bob"]


def _department_month(expr: str) -> bool:
    """Whether the expression reads a department's or an app's month to date (or its limit, recorded beside it)."""
    return bool(re.search(r"llm_quota:(department|app)_\w+:(month|ratio)", expr)) or (
        bool(re.search(r"llm_quota:(department|app)_", expr)) and ":limit" in expr)
def test_every_query_returns_data(stack: dict[str, Any]) -> None:
    url = stack["url"]
    ran = 0
    for dashboard in _dashboards().values():
        options = _options(stack, dashboard)
        for label, values in _substitutions(dashboard, options):
            for where, expr in _queries(dashboard):
                promql = interpolate(expr, values)
                if promql.startswith("label_values("):
                    result = label_values(url, _variable_query({"query": expr}), values)
                    assert result, f"{where} [{label}]: no values"
                    continue
                result = query(url, promql)
                ran += 1
                if _department_month(expr) and not stack["months"]:
                    # first hour of a UTC month: no whole bucket of this month yet (overrides still have a limit)
                    continue
                assert result, f"{where} [{label}]: no data for\n{promql}"
                for series in result:
                    value = float(series["value"][1])
                    assert math.isfinite(value), f"{where} [{label}]: {series}\n{promql}"
    assert ran > 300


def _selectors(expr: str) -> list[str]:
    """The vector selectors of an expression (metric name with its matchers, if any)."""
    metrics, _ = promql_names(expr)
    found = []
    for metric in metrics:
        for match in re.finditer(rf"(?<![\w:]){re.escape(metric)}(?![\w:])(\s*\{{[^{{}}]*\}})?", expr):
            found.append(match.group().replace(" ", "") if not match.group(1) else metric + match.group(1).strip())
    return found
def test_every_selector_matches_series(stack: dict[str, Any]) -> None:
    """With every variable at All, each selector on its own matches series: a fallback such as `or ... * 0`
    cannot hide a selector that matches nothing (a misspelt label value)."""
    checked = 0
    for dashboard in _dashboards().values():
        values = {v["name"]: v["allValue"] for v in dashboard["templating"]["list"]}
        for where, expr in _queries(dashboard):
            if expr.startswith("label_values("):
                expr = _label_values_parts(expr)[0] or ""
            for selector in _selectors(interpolate(expr, values)):
                if _department_month(selector) and not stack["months"]:
                    continue
                assert query(stack["url"], f"count({selector})"), f"{where}: {selector} matches nothing"
                checked += 1
    assert checked > 50
def test_tempo_traces_to_metrics_query_returns_data(stack: dict[str, Any]) -> None:
    links = _datasource("tempo")["jsonData"]["tracesToMetrics"]
    span = {"user.id": "alice", "gen_ai.request.model": "tiny-llama-chat"}
    tags = ", ".join(f'{t["value"]}="{span[t["key"]]}"' for t in links["tags"])
    for q in links["queries"]:
        promql = q["query"].replace("$$", "$").replace("$__tags", tags)
        assert query(stack["url"], promql), promql
def test_names_in_queries_exist_on_the_live_series(stack: dict[str, Any]) -> None:
    """Each label a query filters or groups by is carried by one of the metrics it reads, in what the package
    (and the rules built on it) actually produced."""
    for dashboard in _dashboards().values():
        for where, expr in _queries(dashboard):
            metrics, labels = query_names(expr)
            if any(_department_month(m) for m in metrics) and not stack["months"]:
                continue
            # a query may read its metrics by a name regex (the every-window panels), and label_replace's
            # destinations are labels it makes, not ones it reads
            by_regex = re.search(r'__name__=~"([^"]+)"', expr)
            named = "|".join(re.escape(m) for m in sorted(metrics))
            selector = by_regex.group(1) if by_regex and not metrics else named
            made = set(re.findall(r',\s*"(\w+)",\s*"[^"]*",\s*"\w+",\s*"[^"]*"\)', expr))
            # `service_name=~"$app|"` also matches the series without it: the semconv histograms scraped directly
            optional = set(re.findall(r'(\w+)=~"\$\w+\|"', expr))
            for label in labels - {"__name__"} - made - optional:
                found = query(stack["url"], f'count({{__name__=~"{selector}", {label}!=""}})')
                assert found, f"{where}: no series of {sorted(metrics)} has the label {label}"


def _limit(quotas: Quotas, principal: str, kind: str, name: str) -> float:
    scope = quotas.limits(BY_NAME[principal])
    override = scope.overrides.get(name)
    value = override.get(kind) if override is not None else None
    result = value if value is not None else scope.default.get(kind)
    assert result is not None
    return float(result)
def test_quota_panels_agree_with_the_rendered_rules(stack: dict[str, Any]) -> None:
    """Every quota panel query (All) returns, per user / department, the usage the app reported, the limit of the
    quota file and their ratio (x100 where the panel shows percent)."""
    quotas: Quotas = stack["quotas"]
    usage = {
        ("user", "tokens"): _totals(stack["last"], names.PROM_LLM_TOKEN_USAGE, "user_id"),
        ("user", "cost"): _totals(stack["last"], names.PROM_LLM_COST, "user_id"),
        # month to date: the whole hour that was backfilled with the first round (the current hour is not counted)
        ("department", "tokens"): _totals(stack["first"], names.PROM_LLM_TOKEN_USAGE, "department"),
        ("department", "cost"): _totals(stack["first"], names.PROM_LLM_COST, "department"),
        ("app", "tokens"): _totals(stack["first"], names.PROM_LLM_TOKEN_USAGE, APP_LABEL),
        ("app", "cost"): _totals(stack["first"], names.PROM_LLM_COST, APP_LABEL),
    }
    # Exact month-to-date needs the backfilled hour to be the last whole one (and one of this month).
    departments = stack["months"] and time.time() // 3600 * 3600 == stack["hour"]
    checked: set[str] = set()
    for where, _panel, t, series in _quota_targets():
        principal_kind, what = series.split(":")[1:]
        principal, kind = principal_kind.split("_")
        label = BY_NAME[principal].label
        if principal != "user" and not departments:
            continue
        all_values = {"user": ".*", "department": ".*", "app": ".*"}
        result = {r["metric"][label]: float(r["value"][1]) for r in query(stack["url"], interpolate(t["expr"],
                                                                                                   all_values))}
        used = usage[(principal, kind)]
        scope = quotas.limits(BY_NAME[principal])
        limited = set(used) | {n for n, limits in scope.overrides.items() if limits.get(kind) is not None}
        if what == "limit":
            expected = {n: _limit(quotas, principal, kind, n) for n in limited}
        elif what == "ratio":
            expected = {n: 100 * used[n] / _limit(quotas, principal, kind, n) for n in used}
        else:
            expected = used
        assert result.keys() == expected.keys(), where
        for name, value in expected.items():
            assert result[name] == pytest.approx(value, rel=1e-9), f"{where}: {name}"
        checked.add(f"{principal}_{kind}:{what}")
    expected_kinds = {f"user_{k}:{w}" for k in ("tokens", "cost") for w in ("24h", "limit", "ratio")}
    if departments:
        expected_kinds |= {f"{p}_{k}:{w}" for p in ("department", "app") for k in ("tokens", "cost")
                           for w in ("month", "limit", "ratio")}
    assert checked >= expected_kinds
def test_headroom_panels_are_the_limit_minus_the_usage(stack: dict[str, Any]) -> None:
    """Every headroom query (All) returns, per user / department with usage, the quota file's limit minus the usage
    the app reported, 0 for a principal over its limit (carol)."""
    quotas: Quotas = stack["quotas"]
    departments = stack["months"] and time.time() // 3600 * 3600 == stack["hour"]
    checked: dict[tuple[str, str], dict[str, float]] = {}
    for where, t, limit, _usage in _headroom_targets():
        principal, kind = limit.split(":")[1].split("_")
        if principal != "user" and not departments:
            continue
        label = BY_NAME[principal].label
        metric = names.PROM_LLM_TOKEN_USAGE if kind == "tokens" else names.PROM_LLM_COST
        used = _totals(stack["last" if principal == "user" else "first"], metric, label)
        result = {r["metric"][label]: float(r["value"][1])
                  for r in query(stack["url"], interpolate(t["expr"], {"user": ".*", "department": ".*", "app": ".*"}))}
        expected = {n: max(_limit(quotas, principal, kind, n) - value, 0.0) for n, value in used.items()}
        assert result == pytest.approx(expected, rel=1e-9, abs=1e-9), where
        checked[(principal, kind)] = result
    assert checked.keys() >= {("user", "tokens"), ("user", "cost")}
    assert checked[("user", "tokens")]["carol"] == 0  # over her 300-token quota: nothing left, not negative
    assert min(checked[("user", "tokens")].values()) == 0 < max(checked[("user", "tokens")].values())
    if departments:
        assert checked.keys() >= {(p, k) for p in ("department", "app") for k in ("tokens", "cost")}
        assert checked[("app", "tokens")] == {APP: 0}  # over its 500-token budget


def test_quota_alert_panel_shows_the_firing_alert(stack: dict[str, Any]) -> None:
    (alerts,) = [t for d in _dashboards().values() for p in _data_panels(d) for t in p["targets"]
                 if "ALERTS" in promql_names(t["expr"])[0]]
    firing = {(r["metric"]["alertname"], r["metric"]["severity"], r["metric"].get("user_id", ""),
               r["metric"].get("department", "") or r["metric"].get(APP_LABEL, ""))
              for r in query(stack["url"], alerts["expr"])}
    assert ("LLMUserTokenQuota", "critical", "carol", "") in firing
    assert ("LLMUserTokenQuota", "warning", "carol", "") in firing
    if stack["months"]:
        assert ("LLMDepartmentTokenBudget", "critical", "", "support") in firing
        assert ("LLMAppTokenBudget", "critical", "", APP) in firing  # the table's App column
    assert all(user in ("", "carol") for _, _, user, _ in firing), firing


def test_every_window_panels_show_each_recorded_ratio_labelled_with_its_window(stack: dict[str, Any]) -> None:
    """The every-window panels (one query whatever windows the quota file sets) return each recorded ratio x100,
    labelled with its window and kind: here the users' 24h, the departments' and the apps' month."""
    panels = [p for d in _dashboards().values() for p in _data_panels(d) if "every window" in p["title"]]
    assert len(panels) == 3
    for panel in panels:
        (target,) = panel["targets"]
        (principal,) = [s.name for s in BY_NAME.values() if f"llm_quota:{s.name}_" in target["expr"]]
        label, window = BY_NAME[principal].label, BY_NAME[principal].window
        shown = {(r["metric"][label], r["metric"]["window"], r["metric"]["quota"]): float(r["value"][1])
                 for r in query(stack["url"], interpolate(target["expr"], {"user": ".*", "department": ".*",
                                                                           "app": ".*"}))}
        recorded = {(r["metric"][label], window, kind): 100 * float(r["value"][1]) for kind in ("tokens", "cost")
                    for r in query(stack["url"], f"llm_quota:{principal}_{kind}:ratio")}
        assert shown == pytest.approx(recorded) and (recorded or principal != "user"), panel["title"]


def test_gpu_protection_panels_show_the_rate_limited_user(stack: dict[str, Any]) -> None:
    """erin, the one user with budget mode's rate limits, is refused every round: by user in the requests counter,
    by scope and window in the guard decisions (the windows the app counted); the others show 0 refusals, and every
    user their load per minute."""
    panels = {p["title"]: p for d in _dashboards().values() for p in _data_panels(d)
              if p["title"].startswith("GPU protection")}
    assert len(panels) == 4, sorted(panels)
    everything = {"app": ".*", "model": ".*", "department": ".*", "user": ".*"}

    def shown(words: str) -> list[dict[str, Any]]:
        ((_, panel),) = [(t, p) for t, p in panels.items() if words in t]
        (target,) = panel["targets"]
        return query(stack["url"], interpolate(target["expr"], everything))

    users = {u for u, _, _ in USERS} | {RATE_LIMITED[0], AT_THE_LIMIT[0]}
    refused = {r["metric"]["user_id"]: float(r["value"][1]) for r in shown("refused by a rate")}
    assert refused.keys() == users and refused[RATE_LIMITED[0]] > 0, refused
    assert all(value == 0 for user, value in refused.items() if user != RATE_LIMITED[0]), refused
    counted = _totals(stack["last"], names.PROM_GUARD_DECISIONS, names.GUARD_WINDOW)
    assert {w for w in ("minute", "concurrent") if counted.get(w)} == {"minute", "concurrent"}, counted
    decided = {(r["metric"][names.GUARD_SCOPE], r["metric"][names.GUARD_WINDOW]) for r in shown("refusals/s")}
    assert decided == {("user", "minute"), ("user", "concurrent")}
    for words in ("requests per minute", "tokens per minute"):
        load = {r["metric"]["user_id"]: float(r["value"][1]) for r in shown(words)}
        assert load.keys() == users and all(load[u] > 0 for u in users - {RATE_LIMITED[0]}), (words, load)


def test_at_the_limit_panels_show_the_calls_fitted_and_moved(stack: dict[str, Any]) -> None:
    """frank, near his 24 h budget every round: one call moved by the downgrade rule (to another endpoint), one
    shortened to what remained; both panels show them by decision, scope and window, as many as the app counted."""
    panels = [p for d in _dashboards().values() for p in _data_panels(d) if p["title"].startswith("At the limit")]
    assert len(panels) == 2, [p["title"] for p in panels]
    everything = {"app": ".*", "model": ".*", "department": ".*", "user": ".*"}
    counted = _totals(stack["last"], names.PROM_GUARD_DECISIONS, names.GUARD_DECISION)
    assert counted.get("fit", 0) >= 1 and counted.get("downgrade", 0) >= 1, counted
    for panel in panels:
        (target,) = panel["targets"]
        shown = {(r["metric"][names.GUARD_DECISION], r["metric"][names.GUARD_SCOPE], r["metric"][names.GUARD_WINDOW]):
                 float(r["value"][1]) for r in query(stack["url"], interpolate(target["expr"], everything))}
        assert shown.keys() == {("fit", "user", "24h"), ("downgrade", "user", "24h")}, (panel["title"], shown)
        assert all(v > 0 for v in shown.values()), shown


def test_grant_panels_show_each_grant_in_force_and_the_limits_it_raises(stack: dict[str, Any]) -> None:
    """The grants table lists each grant of GRANTED (its principal, id, window, kind, amount) beside its principal's
    limit with the grants (the quota file's + the amount); the granted-limits panels show those limits per kind."""
    ((_, table),) = [(d, p) for d in _dashboards().values() for p in _data_panels(d)
                     if p["title"] == "Quota grants in force"]
    everything = {"app": ".*", "model": ".*", "department": ".*", "user": ".*"}
    file_quotas = parse_quotas(QUOTAS, "dashboard test quotas")
    expected: dict[tuple[str, str, str, str, str], tuple[float, float]] = {}
    for grant in stack["grants"]:
        scope = BY_NAME[grant.scope]
        for kind in ("tokens", "cost"):
            limit = _limit(file_quotas, grant.scope, kind, grant.principal) + (grant.amount(kind) or 0)
            expected[(scope.label, grant.principal, grant.id, grant.window, kind)] = (grant.amount(kind) or 0, limit)
    columns = []
    for target in table["targets"]:
        found = {}
        for r in query(stack["url"], interpolate(target["expr"], everything)):
            labels = r["metric"]
            assert "__name__" not in labels, labels  # the table's two queries merge on equal labels
            (label,) = [k for k in labels if k in (BY_NAME[s].label for s in GRANTED)]
            found[(label, labels[label], labels["grant"], labels["window"], labels["quota"])] = float(r["value"][1])
        columns.append(found)
    assert columns[0] == pytest.approx({key: amount for key, (amount, _) in expected.items()}), columns[0]
    assert columns[1] == pytest.approx({key: limit for key, (_, limit) in expected.items()}), columns[1]
    for kind in ("tokens", "cost"):
        ((panel, target),) = [(p, t) for d in _dashboards().values() for p in _data_panels(d) for t in p["targets"]
                              if p["title"] == f"Limits raised by grants: {kind}"]
        shown = {(r["metric"].get("user_id") or r["metric"]["department"], r["metric"]["window"]): float(r["value"][1])
                 for r in query(stack["url"], interpolate(target["expr"], everything))}
        assert shown == pytest.approx({(name, window): limit for (_, name, _, window, k), (_, limit) in expected.items()
                                       if k == kind}), panel["title"]
