"""The rendered quota rules evaluated by the real promtool: every threshold, default, override and window."""

from __future__ import annotations

import subprocess
import sys

import yaml

from otel_tokens.ops.rules import render_text
from otel_tokens.quota.file import parse_quotas
from tests.support.binaries import require_binary
from tests.support.forecast_quotas import FORECAST_QUOTAS
from tests.support.promtool_rules import QUOTAS, alert, dept, promtool_test
from tests.support.promtool_series import tokens


def test_user_quotas_every_threshold_default_override_reset_cost_and_the_rolling_window(tmp_path):
    series = [
        tokens("below", "0+70x10 700x1500"),
        tokens("at80", "0+80x10 800x1500"),
        tokens("between", "0+45x10 450x1500", "input"), tokens("between", "0+45x10 450x1500", "output"),
        tokens("at100", "0+100x10 1000x1500"),
        tokens("above", "0+150x10 1500x1500"),
        tokens("alice", "0+170x10 1700x1500"),  # over the default, under her own override
        tokens("restarted", "0+100x5 0+100x5 500x1500"),  # the process restarted: the counter reset
        tokens("two-processes", "0+50x10 500x1500", instance="a:9464"),
        tokens("two-processes", "_x10 0+50x10 500x1500", instance="b:9464"),  # started later, new series
        {"series": 'llm_quota_cost_total{user_id="spender",department="eng",gen_ai_token_type="output",currency="USD",'
                   'instance="app:9464",job="app"}', "values": "0+0.1x10 1x1500"},
    ]
    at_40m = sorted([
        alert("user", "at80", "tokens", "warning", "800", "1k", "80%"),
        alert("user", "between", "tokens", "warning", "900", "1k", "90%"),
        alert("user", "alice", "tokens", "warning", "1.7k", "2k", "85%"),
    ], key=lambda a: a["exp_labels"]["user_id"])
    # at and above 100 % both fire in Prometheus; Alertmanager inhibits the warning (tested end to end)
    critical_40m = sorted([
        alert("user", name, "tokens", severity, usage, "1k", percent)
        for name, usage, percent in (("at100", "1k", "100%"), ("above", "1.5k", "150%"),
                                     ("restarted", "1k", "100%"), ("two-processes", "1k", "100%"))
        for severity in ("critical", "warning")
    ], key=lambda a: (a["exp_labels"]["severity"], a["exp_labels"]["user_id"]))
    tests = {"evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": "40m", "alertname": "LLMUserTokenQuota", "exp_alerts": at_40m + critical_40m},
            {"eval_time": "40m", "alertname": "LLMUserCostQuota",
             "exp_alerts": [alert("user", "spender", "cost", "critical", "1", "1", "100%"),
                            alert("user", "spender", "cost", "warning", "1", "1", "100%")]},
            {"eval_time": "1500m", "alertname": "LLMUserTokenQuota", "exp_alerts": []},  # 24 h later: rolled out
        ],
        "promql_expr_test": [
            {"expr": 'llm_quota:user_tokens:24h{user_id=~"between|below|two-processes"}', "eval_time": "40m",
             "exp_samples": [{"labels": 'llm_quota:user_tokens:24h{user_id="below"}', "value": 700},
                             {"labels": 'llm_quota:user_tokens:24h{user_id="between"}', "value": 900},
                             {"labels": 'llm_quota:user_tokens:24h{user_id="two-processes"}', "value": 1000}]},
            {"expr": 'llm_quota:user_tokens:limit{user_id=~"alice|below"}', "eval_time": "40m",
             "exp_samples": [{"labels": 'llm_quota:user_tokens:limit{user_id="alice"}', "value": 2000},
                             {"labels": 'llm_quota:user_tokens:limit{user_id="below"}', "value": 1000}]},
        ],
    }]}
    # users only: the departments' groups, evaluated at every minute of the 25 h, would take most of the time
    promtool_test(tmp_path, tests, {"warning_ratio": QUOTAS["warning_ratio"], "users": QUOTAS["users"]})


def test_department_budgets_follow_the_calendar_month(tmp_path):
    per_day = 96  # samples at 15m
    jan30_noon = int(29.5 * per_day)
    jan20, jan26, jan28 = 19 * per_day, 25 * per_day, 27 * per_day
    feb2_noon = int(32.5 * per_day)
    series = [
        # 9500 spent on Jan 30 noon, then 8500 more on Feb 2 noon
        dept("sales", f"0x{jan30_noon - 1} 9500x{feb2_noon - jan30_noon - 1} 18000x300"),
        # support has its own 20000: 75 %, then 85 %, then 105 %
        dept("support", f"0x{jan20 - 1} 15000x{jan26 - jan20 - 1} 17000x{jan28 - jan26 - 1} 21000x800"),
        dept("ops", f"0x{jan20 - 1} 12x1000", "llm_quota_cost_total"),
        # 700 in January's last hour (Jan 31 23:30): never in January's month to date, all in its previous month
        dept("late", f"0x{30 * per_day + 23 * 4 + 1} 700x400"),
    ]
    tests = {"evaluation_interval": "1h", "tests": [{
        "interval": "15m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": "25d", "alertname": "LLMDepartmentTokenBudget", "exp_alerts": []},
            {"eval_time": "26d12h", "alertname": "LLMDepartmentTokenBudget",
             "exp_alerts": [alert("department", "support", "tokens", "warning", "17k", "20k", "85%")]},
            {"eval_time": "30d12h", "alertname": "LLMDepartmentTokenBudget", "exp_alerts": [
                alert("department", "sales", "tokens", "warning", "9.5k", "10k", "95%"),
                alert("department", "support", "tokens", "critical", "21k", "20k", "105%"),
                alert("department", "support", "tokens", "warning", "21k", "20k", "105%")]},
            # the month turned: January's spending no longer counts
            {"eval_time": "31d12h", "alertname": "LLMDepartmentTokenBudget", "exp_alerts": []},
            {"eval_time": "33d12h", "alertname": "LLMDepartmentTokenBudget",
             "exp_alerts": [alert("department", "sales", "tokens", "warning", "8.5k", "10k", "85%")]},
            {"eval_time": "25d", "alertname": "LLMDepartmentCostBudget",
             "exp_alerts": [alert("department", "ops", "cost", "critical", "12", "10", "120%"),
                            alert("department", "ops", "cost", "warning", "12", "10", "120%")]},
        ],
        "promql_expr_test": [
            {"expr": 'llm_quota:department_tokens:month{department="sales"}', "eval_time": "30d23h",
             "exp_samples": [{"labels": 'llm_quota:department_tokens:month{department="sales",month="197001"}',
                              "value": 9500}]},
            # Feb 1 00:00: no bucket of February has completed yet
            {"expr": 'llm_quota:department_tokens:month{department="sales"}', "eval_time": "31d", "exp_samples": []},
            {"expr": 'llm_quota:department_tokens:month{department="sales"}', "eval_time": "31d1h",
             "exp_samples": [{"labels": 'llm_quota:department_tokens:month{department="sales",month="197002"}',
                              "value": 0}]},
            {"expr": 'llm_quota:department_tokens:month{department="late"}', "eval_time": "30d23h",
             "exp_samples": [{"labels": 'llm_quota:department_tokens:month{department="late",month="197001"}',
                              "value": 0}]},
            # the whole of January, once its last bucket is written, for the rest of February
            # in January, the previous month is the hour before Jan 1 (the first bucket's), empty here
            {"expr": "llm_quota:department_tokens:previous_month", "eval_time": "30d23h", "exp_samples": [
                {"labels": f'llm_quota:department_tokens:previous_month{{department="{d}"}}', "value": 0}
                for d in ("late", "sales", "support")]},
            *({"expr": "llm_quota:department_tokens:previous_month", "eval_time": at, "exp_samples": [
                {"labels": 'llm_quota:department_tokens:previous_month{department="late"}', "value": 700},
                {"labels": 'llm_quota:department_tokens:previous_month{department="sales"}', "value": 9500},
                {"labels": 'llm_quota:department_tokens:previous_month{department="support"}', "value": 21000}]}
              for at in ("31d1h", "33d12h", "40d")),
            {"expr": "llm_quota:department_cost:previous_month", "eval_time": "31d1h",
             "exp_samples": [{"labels": 'llm_quota:department_cost:previous_month{department="ops"}', "value": 12}]},
        ],
    }]}
    promtool_test(tmp_path, tests, {"warning_ratio": QUOTAS["warning_ratio"], "departments": QUOTAS["departments"]})
def test_rules_command_writes_checks_and_reports_errors(tmp_path):
    require_binary("promtool")
    quota_file = tmp_path / "q.yaml"
    quota_file.write_text(yaml.safe_dump(QUOTAS))
    out = tmp_path / "rules" / "quotas.yml"
    cli = [sys.executable, "-m", "otel_tokens.ops.cli", "rules"]
    subprocess.run([*cli, str(quota_file), "-o", str(out), "--check"], check=True, capture_output=True)
    assert out.read_text().startswith("# Generated by `otel-tokens rules`")
    quota_file.write_text("users:\n  default: {tokens: many}\n")
    result = subprocess.run([*cli, str(quota_file), "-o", str(out)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"otel-tokens rules: quota file {quota_file}: users.default.tokens: 'many' "
                                     "is not a positive number (write 200000, 2e5 or 200_000)")
    result = subprocess.run([*cli, str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert result.returncode == 2 and "cannot be read" in result.stderr
    result = subprocess.run([*cli, str(quota_file).replace("q.yaml", "x.yaml"), "--reload", "http://127.0.0.1:9"],
                            capture_output=True, text=True)
    assert result.returncode == 2


def _usage(user: str, value: float) -> dict:
    return {"labels": f'llm_quota:user_tokens:24h{{user_id="{user}"}}', "value": value}


USER_TOKENS = {"users": {"default": {"tokens": 10**9}}}  # the window alone: no department rules to evaluate
def test_rolling_window_from_rollups_is_exact_at_and_between_bucket_edges(tmp_path):
    """One sample every 10 s, +1 token each, for 25 h. The window starts on the latest 5-minute boundary
    at least 24 h ago: at t it is (u - 24h, t] with u = t rounded down to 5 minutes. A series that died
    mid-window, one born inside it, one that reset inside it, a user who stopped, one who stopped and one
    who started in the bucket whose rollup is not yet written count exactly too. (Rules evaluated
    every minute here, as the rollups are, so that 25 h evaluate in seconds.)"""
    series = [
        tokens("steady", "0+1x9100"),
        tokens("worker", "0+1x5000 stale", instance="a:1"),  # killed at 50,000 s
        tokens("worker", "_x6000 0+2x3100", instance="b:1"),  # its replacement, born at 60,000 s
        tokens("restarted", "0+1x4000 0+1x5100"),  # reset at 40,010 s
        tokens("gone", "0+1x3010 stale"),  # stopped at 30,100 s, mid-bucket: its buckets since have no rollup
        tokens("killed", "0+1x8985 stale"),  # died at 89,850 s, in the bucket whose rollup is not written at 90,000 s
        tokens("fresh", "_x8995 0+1x100"),  # born at 89,950 s, just before a boundary
    ]

    def expected(t: int) -> list[dict]:
        start = t // 300 * 300 - 86400  # the window's first boundary
        steady = (t - start) // 10
        worker = (50000 - start) // 10 + 2 * ((t - 60000) // 10)
        restarted = (40000 - start) // 10 + (t - 40010) // 10
        gone = (30100 - start) // 10
        killed, fresh = (89850 - start) // 10, (t - 89950) // 10
        return sorted([_usage("steady", steady), _usage("worker", worker), _usage("restarted", restarted),
                       _usage("gone", gone), _usage("killed", killed), _usage("fresh", fresh)],
                      key=lambda s: s["labels"])

    at = [90000, 90060, 90120, 90240, 90300]  # on a boundary, just after, between, just before, the next
    promtool_test(tmp_path, {"evaluation_interval": "1m", "tests": [{
        "interval": "10s", "input_series": series,
        "promql_expr_test": [{"expr": "llm_quota:user_tokens:24h", "eval_time": f"{t}s", "exp_samples": expected(t)}
                             for t in at],
    }]}, USER_TOKENS)
def test_rollups_of_any_phase_add_up_and_a_missed_one_loses_only_its_bucket(tmp_path):
    """The window's parts and its own group (every 10 s here, the window first) over rollup series given by
    hand: each
    bucket's rollup stamped 30 to 80 s after its boundary, the phase changing from bucket to bucket (as
    backfilled and live rollups, or a restarted group, may differ), and the rollup of two buckets never
    written (missed evaluations). Each bucket's usage differs, so a bucket read twice or dropped shows.
    Checked every 10 s over two buckets: exact but for the missed bucket, which the raw data covers
    while it is the newest and which is lost from the window once older (the documented bound)."""
    promtool = require_binary("promtool")
    rules = yaml.safe_load(render_text(parse_quotas(USER_TOKENS, "test quotas")))
    for group in rules["groups"]:  # the rollups are given by hand; their parts are computed
        group["rules"] = [r for r in group["rules"] if r.get("record") != "llm_quota:user_tokens:5m"]
    # the window's group first: at each boundary it reads the parts of the boundary before (promtool
    # evaluates groups in file order), as a live group may before the rollup group's next evaluation
    rules["groups"].reverse()
    (tmp_path / "quotas.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    steps = 9061
    rate = [i // 30 % 7 + 1 for i in range(steps)]  # tokens per 10 s, changing every bucket
    raw = [sum(rate[1:i + 1]) for i in range(steps)]  # the counter at 10 i seconds
    missed = {79800, 90000}  # bucket ends whose rollup was never written

    def bucket(end: int) -> int:
        return raw[end // 10] - raw[(end - 300) // 10]

    rollup = ["_"] * steps
    for end in range(300, 10 * steps, 300):
        stamp = end + 30 + 10 * (end // 300 % 6)  # 30 .. 80 s after the boundary
        if end not in missed and stamp // 10 < steps:
            rollup[stamp // 10] = str(bucket(end))

    def expected(t: int) -> int:
        start = t // 300 * 300 - 86400
        parts = t // 300 * 300 - (600 if t % 300 == 0 else 300)  # the boundary of the newest parts read at t
        lost = sum(bucket(end) for end in missed if start + 300 <= end <= parts)
        return raw[t // 10] - raw[start // 10] - lost

    at = range(90000, 90600, 10)
    # the order said, or promtool runs the groups in Go map order (the parts before the window, some runs)
    tests = {"rule_files": ["quotas.yml"], "group_eval_order": [g["name"] for g in rules["groups"]],
             "evaluation_interval": "10s", "tests": [{
        "interval": "10s",
        "input_series": [tokens("steady", " ".join(map(str, raw))),
                         {"series": 'llm_quota:user_tokens:5m{user_id="steady"}', "values": " ".join(rollup)}],
        "promql_expr_test": [{"expr": "llm_quota:user_tokens:24h", "eval_time": f"{t}s",
                              "exp_samples": [_usage("steady", expected(t))]} for t in at],
    }]}
    assert expected(90310) < raw[9031] - raw[(90310 - 86400) // 10] - bucket(79800)  # both losses in view
    (tmp_path / "quotas.test.yml").write_text(yaml.safe_dump(tests, sort_keys=False, width=10**9))
    result = subprocess.run([promtool, "test", "rules", "quotas.test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _forecast(name: str, exhaustion: str, usage: str, burn: str, forecast: str, percent: str,
              kind: str = "tokens") -> dict:
    unit, limit = (" tokens", "10k") if kind == "tokens" else ("", "100.00")
    what = "token" if kind == "tokens" else "cost"
    return {"exp_labels": {"department": name, "severity": "warning", "window": "month", "quota": kind},
            "exp_annotations": {
                "summary": f"Department {name} is on course to exhaust its monthly {what} budget on {exhaustion}",
                "description": f"Department {name} has used {usage}{unit} of {limit}{unit} this calendar month (UTC); "
                               f"at its current rate ({burn}{unit} an hour: the lower of the last 6 h's average and "
                               f"the median hour of the last 24 h) it reaches the budget on {exhaustion} and would "
                               f"end the month at {percent} of it.",
                "exhaustion": exhaustion, "forecast": f"{forecast}{unit}", "burn_rate": f"{burn}{unit} per hour",
                "percent": percent}}
def test_budget_forecasts_project_the_burn_rate_to_the_month_end(tmp_path):
    per_day, per_hour = 96, 4  # samples at 15m
    spike = 10 * per_day + 10 * per_hour  # Jan 11 10:00
    series = [
        # hot: 20 an hour from Jan 1, 14,880 by the month's end: the forecast fires long before the budget
        dept("hot", "0+5x3300"),
        # steady: 8 an hour, 5,952 by the month's end: never
        dept("steady", "0+2x3300"),
        # spike: 4 an hour and 3,000 in one hour on Jan 11: the median hour ignores it
        dept("spike", f"0+1x{spike - 1} {spike + 2999}+1x2000"),
        # quiet: 8,000 in the first 100 hours (80 an hour), then its process is gone: no recent traffic
        dept("quiet", "0+20x400 _x2000"),
        # ops: cost 0.2 an hour against its 100 (its tokens have no limit)
        dept("ops", "0+0.05x3300", "llm_quota_cost_total"),
    ]
    # every 30 minutes (each time below is on one; the alert's `for: 30m` is one step): half the evaluations
    tests = {"evaluation_interval": "30m", "tests": [{
        "interval": "15m",
        "input_series": series,
        "alert_rule_test": [
            # Jan 3: quiet's 3,840 + 80 an hour reach 10,000 77 hours later; hot is on course too
            {"eval_time": "2d", "alertname": "LLMDepartmentBudgetForecast", "exp_alerts": [
                _forecast("hot", "1970-01-21 20:00:00 +0000 UTC", "960", "20", "14.88k", "148.8%"),
                _forecast("ops", "1970-01-21 20:00:00 +0000 UTC", "9.60", "0.20", "148.80", "148.8%", "cost"),
                _forecast("quiet", "1970-01-06 05:00:00 +0000 UTC", "3.84k", "80", "59.52k", "595.2%")]},
            # Jan 11 12:00: hot's 5,040 + 20 an hour for 492 hours; spike's 3,000 two hours ago is not a rate
            {"eval_time": "10d12h", "alertname": "LLMDepartmentBudgetForecast", "exp_alerts": [
                _forecast("hot", "1970-01-21 20:00:00 +0000 UTC", "5.04k", "20", "14.88k", "148.8%"),
                _forecast("ops", "1970-01-21 20:00:00 +0000 UTC", "50.40", "0.20", "148.80", "148.8%", "cost")]},
            # the month turned: hot starts again from 0 and is on course again once February's burn is seen
            # (ops's limit is its own, not the default's, so its forecast goes on: 0 so far, 0.2 an hour)
            {"eval_time": "31d30m", "alertname": "LLMDepartmentBudgetForecast", "exp_alerts": [
                _forecast("ops", "1970-02-21 20:30:00 +0000 UTC", "0", "0.20", "134.30", "134.3%", "cost")]},
            {"eval_time": "33d", "alertname": "LLMDepartmentBudgetForecast", "exp_alerts": [
                _forecast("hot", "1970-02-21 20:00:00 +0000 UTC", "960", "20", "13.44k", "134.4%"),
                _forecast("ops", "1970-02-21 20:00:00 +0000 UTC", "9.60", "0.20", "134.40", "134.4%", "cost")]},
        ],
        "promql_expr_test": [
            {"expr": "llm_quota:department_tokens:burn_rate", "eval_time": "10d12h", "exp_samples": [
                {"labels": f'llm_quota:department_tokens:burn_rate{{department="{d}"}}', "value": v}
                for d, v in (("hot", 20), ("spike", 4), ("steady", 8))]},
            {"expr": "llm_quota:department_tokens:forecast_ratio", "eval_time": "10d12h", "exp_samples": [
                {"labels": f'llm_quota:department_tokens:forecast_ratio{{department="{d}"}}', "value": v}
                for d, v in (("hot", 1.488), ("quiet", 0.8), ("spike", (2999 + 252 * 4 + 492 * 4) / 10000),
                             ("steady", 0.5952))]},
            # quiet has had no traffic for 8 hours: it burns 0, reaches its budget never, stays at its 8,000
            {"expr": 'llm_quota:department_tokens:burn_rate{department="quiet"}', "eval_time": "4d12h",
             "exp_samples": [{"labels": 'llm_quota:department_tokens:burn_rate{department="quiet"}', "value": 0}]},
            {"expr": 'llm_quota:department_tokens:exhaustion_time{department="quiet"}', "eval_time": "4d12h",
             "exp_samples": []},
            {"expr": 'llm_quota:department_tokens:forecast{department="quiet"}', "eval_time": "6d12h",
             "exp_samples": [{"labels": 'llm_quota:department_tokens:forecast{department="quiet"}', "value": 8000}]},
            # Feb 1 00:30: no February bucket yet, so no month-to-date and no default limit to page on
            {"expr": "llm_quota:department_tokens:forecast_ratio", "eval_time": "31d30m", "exp_samples": []},
            {"expr": "llm_quota:department_tokens:forecast", "eval_time": "31d30m", "exp_samples": [
                {"labels": f'llm_quota:department_tokens:forecast{{department="{d}"}}', "value": v * (27 * 24 + 23.5)}
                for d, v in (("hot", 20), ("spike", 4), ("steady", 8))]},
        ],
    }]}
    promtool_test(tmp_path, tests, FORECAST_QUOTAS)


def _app(service: str | None, values: str, instance: str = "a:9464") -> dict:
    app = f'service_name="{service}",' if service else ""
    return {"series": f'llm_quota_tokens_total{{{app}department="sales",user_id="u",instance="{instance}",job="app"}}',
            "values": values}


def _app_alert(service: str, severity: str, usage: str, limit: str, percent: str) -> dict:
    verb = "is nearing" if severity == "warning" else "has reached"
    return {"exp_labels": {"service_name": service, "severity": severity, "window": "month", "quota": "tokens"},
            "exp_annotations": {
                "summary": f"App {service} {verb} the monthly token budget ({percent})",
                "description": f"App {service} used {usage} tokens of {limit} tokens ({percent}) this calendar month "
                               "(UTC).",
                "usage": f"{usage} tokens", "limit": f"{limit} tokens", "percent": percent}}


def test_app_budgets_sum_each_apps_processes_by_service_name(tmp_path):
    """Apps are budgeted by the service_name on the per-principal counters: kb-chat's two processes add up, the
    department on the same series does not mix apps, and a series without service_name (written before the
    upgrade) belongs to no app."""
    per_day = 96  # samples at 15m
    jan20, jan26, jan30_noon = 19 * per_day, 25 * per_day, int(29.5 * per_day)
    series = [
        _app("kb-chat", f"0x{jan20 - 1} 9000x1000", "a:9464"),
        _app("kb-chat", f"0x{jan26 - 1} 8000x1000", "b:9464"),  # 17,000 of kb-chat's 20,000: 85 %
        _app("batch-summarize", f"0x{jan30_noon - 1} 9500x400"),  # 95 % of the default 10,000
        _app(None, f"0x{jan20 - 1} 50000x1000"),
    ]
    quotas = {"apps": {"default": {"tokens": 10000}, "overrides": {"kb-chat": {"tokens": 20000}}}}
    tests = {"evaluation_interval": "1h", "tests": [{
        "interval": "15m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": "25d", "alertname": "LLMAppTokenBudget", "exp_alerts": []},
            {"eval_time": "30d12h", "alertname": "LLMAppTokenBudget", "exp_alerts": [
                _app_alert("batch-summarize", "warning", "9.5k", "10k", "95%"),
                _app_alert("kb-chat", "warning", "17k", "20k", "85%")]},
            {"eval_time": "31d12h", "alertname": "LLMAppTokenBudget", "exp_alerts": []},  # February
        ],
        "promql_expr_test": [
            {"expr": "llm_quota:app_tokens:month", "eval_time": "30d23h", "exp_samples": [
                {"labels": 'llm_quota:app_tokens:month{month="197001",service_name="batch-summarize"}', "value": 9500},
                {"labels": 'llm_quota:app_tokens:month{month="197001",service_name="kb-chat"}', "value": 17000}]},
        ],
    }]}
    promtool_test(tmp_path, tests, quotas)
