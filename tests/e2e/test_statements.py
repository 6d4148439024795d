"""`otel-tokens report --month / --from --to`: statements from five weeks of counters in a real
Prometheus (imported as TSDB blocks), against the ground truth of what each scrape added: a month
boundary on both sides, a restart inside the month, series born in it, one born and reset within
an hour, traffic in the month's last hour, every row; and against the department rules' own
`previous_month`, read after the month ended (rollups backfilled from the same history)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_tokens.ops.rules import render_text
from otel_tokens.quota.calendar import DAY as DAY_WINDOW
from otel_tokens.quota.calendar import MONTH, window_end, window_start
from otel_tokens.quota.file import parse_quotas
from tests.support.binaries import require_binary
from tests.support.prometheus_stack import group_state, query, rule_group, start_prometheus
from tests.support.quick_rules import HOURLY_GROUP, quick_hourly_group
from tests.support.usage_history import STEP, History, every

ROOT = Path(__file__).resolve().parents[2]
HOUR, DAY = 3600, 86400
PRICE = {"input": 2.5e-6, "output": 10e-6}
QUOTAS = {"departments": {"default": {"tokens": 10**9, "cost": 10**6}}}
EXTRA_USERS = 30  # more users than any --top
# the app (service_name) of each process; the others' series have none, as written before the package recorded it
APPS = {"app:1": "kb-chat", "app:2": "kb-chat", "app:3": "batch-summarize"}


def _month_start(t: float) -> int:
    d = datetime.fromtimestamp(t, timezone.utc)
    return int(datetime(d.year, d.month, 1, tzinfo=timezone.utc).timestamp())


def _label(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m")


def _labels(user: str | None, department: str | None, model: str, provider: str, token_type: str,
            instance: str = "app:1", **extra: str) -> dict[str, str]:
    labels = {"gen_ai_request_model": model, "gen_ai_provider_name": provider, "gen_ai_token_type": token_type,
              "gen_ai_operation_name": "chat", "llm_usage_source": "reported", "job": "app", "instance": instance,
              **extra}
    if instance in APPS:
        labels["service_name"] = APPS[instance]
    if user:
        labels["user_id"] = user
    if department:
        labels["department"] = department
    return labels


def _usage(h: History, user: str | None, department: str | None, model: str, provider: str, times: list[int],
           per_scrape: dict[str, float | list[float]], instance: str = "app:1", priced: bool = True) -> None:
    """One process's token (and cost) counters for each token type."""
    for token_type, amount in per_scrape.items():
        labels = _labels(user, department, model, provider, token_type, instance)
        h.process("llm_token_usage", labels, times, amount)
        if priced:
            cost = [a * PRICE[token_type] for a in amount] if isinstance(amount, list) else amount * PRICE[token_type]
            h.process("llm_cost", {**labels, "currency": "USD"}, times, cost)


def history(start: int, end: int, data_end: int) -> History:
    """Traffic around the month [start, end); scrapes every 5 minutes up to data_end."""
    h = History()
    t0 = start - 2 * DAY
    # alice: steady across both month boundaries
    _usage(h, "alice", "support", "gpt-4o", "openai", list(every(t0, data_end)), {"input": 10, "output": 20})
    h.process("llm_requests", _labels("alice", "support", "gpt-4o", "openai", "input"), every(t0, data_end), 1)
    # bob: his process restarts on day 12, down from 11:50 to 12:10 (a reset across an hour boundary)
    restart = start + 11 * DAY + 12 * HOUR
    for first, last in ((start - DAY, restart - 10 * 60), (restart + 10 * 60, data_end)):
        _usage(h, "bob", "support", "gpt-4o", "openai", list(every(first, last)), {"input": 7, "output": 3},
               instance="app:2")
    # bob's failed calls, born on day 3
    h.process("llm_requests", _labels("bob", "support", "gpt-4o", "openai", "input", "app:2", error_type="timeout"),
              every(start + 3 * DAY, start + 3 * DAY + 2 * STEP), 1)
    # carol: born mid-month on a local model nobody priced
    _usage(h, "carol", "research", "tiny-chat", "transformers", list(every(start + 15 * DAY + 300, data_end)),
           {"input": 5, "output": 4}, instance="app:3", priced=False)
    # dave: born and restarted within one hour (values 5, 8, then 2, 4): the rules' increase() extrapolates here
    born = start + 20 * DAY + 10 * HOUR + 600
    h.process("llm_token_usage", _labels("dave", "research", "tiny-chat", "transformers", "input", "app:4"),
              every(born, born + STEP), [5, 3])
    h.process("llm_token_usage", _labels("dave", "research", "tiny-chat", "transformers", "input", "app:4"),
              every(born + 2 * STEP, born + 12 * STEP), [2, 2] + [1] * 9)
    # old: gone before the month began
    _usage(h, "old", "support", "gpt-4o", "openai", list(every(t0, t0 + DAY)), {"input": 100})
    # late: 700 tokens in the month's last hour, then nothing more
    _usage(h, "late", "sales", "gpt-4o-mini", "openai", list(every(end - 30 * 60, min(data_end, end + 2 * HOUR))),
           {"input": [700.0] + [0.0] * 40})
    # calls nobody claimed
    _usage(h, None, None, "gpt-4o-mini", "openai", list(every(start + 5 * DAY, start + 6 * DAY)), {"input": 1})
    # many small users, each for half an hour on day 3
    for i in range(EXTRA_USERS):
        first = start + 2 * DAY + i * 600
        _usage(h, f"u{i:02d}", "sales", "gpt-4o-mini", "openai", list(every(first, first + 5 * STEP)),
               {"input": float(i + 1), "output": 1.0}, instance="app:5")
    return h


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    prometheus, promtool = require_binary("prometheus"), require_binary("promtool")
    tmp = tmp_path_factory.mktemp("statements")
    now = int(time.time())
    end = _month_start(now)
    if now - end < 3 * HOUR:  # the first hours of a month: take the month before, its rules are not compared
        end = _month_start(end - 1)
    start = _month_start(end - 1)
    data_end = min(end + 6 * HOUR, now - 15 * 60) // STEP * STEP
    h = history(start, end, data_end)
    h.write(tmp / "history.om")
    data = tmp / "prom-data"
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(tmp / "history.om"), str(data)],
                   check=True, capture_output=True)
    rules = tmp / "rules"
    rules.mkdir()
    (rules / "quotas.yml").write_text(quick_hourly_group(render_text(parse_quotas(QUOTAS, "q"))))
    url, prom = start_prometheus(tmp, prometheus, [], retention="400d")
    try:
        out = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "rules-backfill", "--rules",
                              str(rules / "quotas.yml"), "--prometheus", url, "--start", str(start - 2 * DAY),
                              "--end", str(now), "--output", str(tmp / "blocks")],
                             cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr
    finally:
        prom.terminate()
        prom.wait(timeout=30)
    for block in (tmp / "blocks").iterdir():
        shutil.move(str(block), data / block.name)
    url, prom = start_prometheus(tmp, prometheus, [], str(rules / "*.yml"), retention="400d")
    try:
        yield {"url": url, "history": h, "start": start, "end": end, "now": now, "data_end": data_end,
               "compare_rules": _month_start(now) == end, "rules": rules / "quotas.yml"}
    finally:
        prom.terminate()
        prom.wait(timeout=30)


def report(stack: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "report", "--prometheus", stack["url"],
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _by_name(rows: list[dict[str, Any]], field: str) -> dict[str, Any]:
    return {r["name"]: r[field] for r in rows if r[field]}


def _close(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys(), (got, want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, got[name], value)


def test_a_month_statement_is_exact_for_every_row(stack):
    h, start, end = stack["history"], stack["start"], stack["end"]
    out = report(stack, "--month", _label(start), "--format", "json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["statement"]["complete"] is True and s["statement"]["status"] == "complete"
    assert s["statement"]["period"] == _label(start)
    for kind, label in (("departments", "department"), ("users", "user_id"), ("models", "gen_ai_request_model"),
                        ("apps", "service_name")):
        assert _by_name(s[kind], "total_tokens") == {k: int(v) for k, v in
                                                     h.truth("llm_token_usage", start, end, label).items()}, kind
        _close(_by_name(s[kind], "cost"), h.truth("llm_cost", start, end, label))
    assert {r["name"] for r in s["apps"]} == {"kb-chat", "batch-summarize", "__unattributed__"}
    assert _by_name(s["apps"], "requests") == {k: int(v) for k, v in
                                               h.truth("llm_requests", start, end, "service_name").items()}
    users = {r["name"] for r in s["users"]}
    assert "old" not in users and "late" in users and "__unattributed__" in users
    assert len(users) == 6 + EXTRA_USERS  # every row, past any --top
    requests = h.truth("llm_requests", start, end, "user_id")
    assert _by_name(s["users"], "requests") == {k: int(v) for k, v in requests.items()}
    assert s["totals"]["errors"] == 3
    # exact where a bare increase() is not: the restarted and the born-and-reset series
    truth = h.truth("llm_token_usage", start, end, "user_id")
    assert _by_name(s["users"], "total_tokens")["dave"] == 5 + 3 + 2 + 2 + 9 == truth["dave"]
    assert s["totals"]["total_tokens"] == sum(truth.values())
    # the daily lines add up to the rows
    assert sum(x["tokens"] for x in s["lines"]) == s["totals"]["total_tokens"]
    assert {x["day"] for x in s["lines"]} <= {datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")
                                                for t in range(start, end, DAY)}


def test_the_department_rules_previous_month_agrees(stack):
    if not stack["compare_rules"]:
        pytest.skip("the first hours of a month: the rules' previous month is not the one imported")
    h, start, end = stack["history"], stack["start"], stack["end"]
    s = json.loads(report(stack, "--month", _label(start), "--format", "json").stdout)
    # the rule's own expression, evaluated now over the hourly buckets the backfill wrote: what the hourly group
    # records at its next evaluation, without waiting for that group's timer (CI once saw no department recorded
    # after 2 minutes; not seen here, at load or not)
    rendered = {r["record"]: r["expr"] for g in yaml.safe_load(stack["rules"].read_text())["groups"]
                for r in g["rules"] if "record" in r}
    rule = {kind: {r["metric"]["department"]: float(r["value"][1])
                   for r in query(stack["url"], rendered[f"llm_quota:department_{kind}:previous_month"])}
            for kind in ("tokens", "cost")}
    held = f"count_over_time(llm_quota:department_tokens:1h[{end - start}s] @ {end})"
    buckets = query(stack["url"], f"count by (department) ({held})")  # what the rule reads, for the message
    assert {"support", "sales", "research"} <= set(rule["tokens"]) and {"support", "sales"} <= set(rule["cost"]), (
        rule, group_state(rule_group(stack["url"], HOURLY_GROUP)), buckets)
    statement = {"tokens": _by_name(s["departments"], "total_tokens"), "cost": _by_name(s["departments"], "cost")}
    for kind in ("tokens", "cost"):
        for department in ("support", "sales"):  # the rules see only series with a department
            assert rule[kind][department] == pytest.approx(statement[kind][department], rel=1e-9), (kind,
                                                                                                      department)
    # research holds a series born and restarted within one hour: the rule's bucket uses increase(), which
    # extrapolates; the statement counts every sample
    truth = h.truth("llm_token_usage", start, end, "department")["research"]
    assert statement["tokens"]["research"] == truth
    assert rule["tokens"]["research"] != truth and abs(rule["tokens"]["research"] / truth - 1) < 0.01
    assert rule["tokens"]["sales"] == h.truth("llm_token_usage", start, end, "department")["sales"]  # late's 700


def test_csv_has_every_row_and_the_table_the_top(stack):
    start = stack["start"]
    out = report(stack, "--month", _label(start), "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    kinds = [r["kind"] for r in rows]
    assert kinds.count("total") == 1 and kinds.count("user") == 6 + EXTRA_USERS
    assert kinds.count("department") == 4 and kinds.count("model") == 3 and kinds.count("app") == 3
    assert {r["complete"] for r in rows} == {"true"}
    total = next(r for r in rows if r["kind"] == "total")
    assert int(total["total_tokens"]) == sum(int(r["total_tokens"]) for r in rows if r["kind"] == "user")
    table = report(stack, "--month", _label(start), "--format", "markdown", "--top", "3")
    assert table.returncode == 0, table.stderr
    assert f"Users (top 3 of {6 + EXTRA_USERS}; every row: --format csv or json)" in table.stdout


def test_from_to_periods_cut_inside_hours(stack):
    h, start = stack["history"], stack["start"]
    a, b = start + 3 * DAY + 12 * HOUR + 30 * 60 + 7, start + 12 * DAY + 5 * 60  # across bob's restart
    iso = [datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") for t in (a, b)]
    out = report(stack, "--from", iso[0], "--to", iso[1], "--format", "json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert _by_name(s["users"], "total_tokens") == {k: int(v) for k, v in
                                                    h.truth("llm_token_usage", a, b, "user_id").items()}
    # a date --to is the whole day
    day = datetime.fromtimestamp(start + 2 * DAY, timezone.utc).strftime("%Y-%m-%d")
    s = json.loads(report(stack, "--from", day, "--to", day, "--format", "json").stdout)
    assert s["statement"]["end_unix"] == start + 3 * DAY
    assert _by_name(s["users"], "total_tokens") == {
        k: int(v) for k, v in h.truth("llm_token_usage", start + 2 * DAY, start + 3 * DAY, "user_id").items()}


def test_the_running_month_is_marked_in_progress(stack):
    h, end = stack["history"], stack["end"]
    out = report(stack, "--month", _label(end), "--format", "json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    if _month_start(time.time()) == end:
        assert s["statement"]["complete"] is False and s["statement"]["status"].startswith("in progress: to ")
    assert _by_name(s["users"], "total_tokens") == {
        k: int(v) for k, v in h.truth("llm_token_usage", end, stack["data_end"], "user_id").items() if v}


def test_a_month_prometheus_no_longer_holds_is_refused(stack):
    before = _month_start(stack["start"] - 1)
    out = report(stack, "--month", _label(before), "--format", "json")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(f"otel-tokens report: Prometheus at {stack['url']} holds samples only from ")
    assert "no longer fully held" in out.stderr and out.stderr.count("\n") == 1


@pytest.mark.parametrize("zone", ["Asia/Shanghai", "Asia/Kolkata", "America/New_York"])
def test_a_month_in_the_organizations_zone_is_exact_and_its_days_are_local(stack, zone, tmp_path):
    """`--month` in a zone: the usage between local midnights of the 1st (Shanghai: 16:00 UTC the day before;
    Kolkata: 18:30, inside a clock hour; New York: 04:00 or 05:00 after its DST change), exactly, every row; each
    daily line (the FOCUS charge period) begins at local midnight. The quota file's zone is the default."""
    h, start = stack["history"], stack["start"]
    inside = start + 15 * DAY
    a, b = window_start(MONTH, inside, zone), window_end(MONTH, inside, zone)
    out = report(stack, "--month", _label(start), "--timezone", zone, "--format", "json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert (s["statement"]["start_unix"], s["statement"]["end_unix"], s["statement"]["timezone"]) == (a, b, zone)
    for kind, label in (("departments", "department"), ("users", "user_id")):
        assert _by_name(s[kind], "total_tokens") == {k: int(v) for k, v in
                                                     h.truth("llm_token_usage", a, b, label).items()}, kind
        _close(_by_name(s[kind], "cost"), h.truth("llm_cost", a, b, label))
    starts = {datetime.fromisoformat(x["start"].replace("Z", "+00:00")).timestamp() for x in s["lines"]}
    assert starts and all(window_start(DAY_WINDOW, t, zone) == t for t in starts), sorted(starts)[:3]
    assert sum(x["tokens"] for x in s["lines"]) == s["totals"]["total_tokens"]
    quota_file = tmp_path / "quotas.yaml"
    quota_file.write_text(f"timezone: {zone}\nusers: {{default: {{day: {{tokens: 5}}}}}}\n")
    same = report(stack, "--month", _label(start), "--quota-file", str(quota_file), "--format", "json")
    assert json.loads(same.stdout)["totals"] == s["totals"]


@pytest.mark.parametrize(("args", "message"), [
    (["--month", "2026-13"], "bad --month '2026-13': use YYYY-MM"),
    (["--from", "yesterday"], "bad --from 'yesterday': use a date (2026-11-01: local midnight in UTC)"),
    (["--month", "2026-11", "--timezone", "Asia/Shangai"], "bad --timezone: is not an IANA time zone known to this "
                                                          "machine's tzdata (did you mean Asia/Shanghai?)"),
    (["--to", "2026-11-01"], "--to needs --from"),
    (["--month", "2026-11", "--from", "2026-11-01"], "use --month or --from/--to, not both"),
    (["--from", "2026-11-02", "--to", "2026-11-01T00:00:00Z"], "empty period"),
    (["--month", "2026-11", "--window", "7d"], "--window, --at, --png and --mail-to are for the trailing-window"),
    (["--format", "focus"], "--format focus needs a period"),
])
def test_bad_periods_are_one_line_usage_errors(args, message):
    out = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "report", "--prometheus", "http://127.0.0.1:9",
                          *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("otel-tokens report: " + message), out.stderr


# FOCUS 1.2's columns as its specification lists them (specification/columns/*.md at tag v1.2 of
# FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec: "Column ID", "Feature level", "Allows nulls"), written
# here from that text, not from the exporter's constant.
FOCUS_12 = """
AvailabilityZone Recommended null | BilledCost Mandatory notnull | BillingAccountId Mandatory notnull
BillingAccountName Mandatory null | BillingAccountType Conditional notnull | BillingCurrency Mandatory notnull
BillingPeriodEnd Mandatory notnull | BillingPeriodStart Mandatory notnull | CapacityReservationId Conditional null
CapacityReservationStatus Conditional null | ChargeCategory Mandatory notnull | ChargeClass Mandatory null
ChargeDescription Mandatory null | ChargeFrequency Recommended notnull | ChargePeriodEnd Mandatory notnull
ChargePeriodStart Mandatory notnull | CommitmentDiscountCategory Conditional null
CommitmentDiscountId Conditional null | CommitmentDiscountName Conditional null
CommitmentDiscountQuantity Conditional null | CommitmentDiscountStatus Conditional null
CommitmentDiscountType Conditional null | CommitmentDiscountUnit Conditional null
ConsumedQuantity Conditional null | ConsumedUnit Conditional null | ContractedCost Mandatory notnull
ContractedUnitPrice Conditional null | EffectiveCost Mandatory notnull | InvoiceId Recommended null
InvoiceIssuerName Mandatory notnull | ListCost Mandatory notnull | ListUnitPrice Conditional null
PricingCategory Conditional null | PricingCurrency Conditional null
PricingCurrencyContractedUnitPrice Conditional null | PricingCurrencyEffectiveCost Conditional null
PricingCurrencyListUnitPrice Conditional null | PricingQuantity Mandatory null | PricingUnit Mandatory null
ProviderName Mandatory notnull | PublisherName Mandatory notnull | RegionId Conditional null
RegionName Conditional null | ResourceId Conditional null | ResourceName Conditional null
ResourceType Conditional null | ServiceCategory Mandatory notnull | ServiceName Mandatory notnull
ServiceSubcategory Recommended notnull | SkuId Conditional null | SkuMeter Conditional null
SkuPriceDetails Conditional null | SkuPriceId Conditional null | SubAccountId Conditional null
SubAccountName Conditional null | SubAccountType Conditional null | Tags Conditional null
"""
SPEC = [entry.split() for entry in FOCUS_12.replace("\n", " | ").split(" | ") if entry.strip()]
# Columns FOCUS lets be null in general but not on a usage row (ChargeCategory "Usage", ChargeClass
# not "Correction"): PricingCategory, PricingQuantity/Unit, ConsumedQuantity/Unit, SkuId, SkuPriceId.
NOT_NULL_ON_USAGE = {"PricingCategory", "PricingQuantity", "PricingUnit", "ConsumedQuantity", "ConsumedUnit",
                     "SkuId", "SkuPriceId"}
SERVICE_SUBCATEGORIES_OF_AI = {"AI Platforms", "Bots", "Generative AI", "Machine Learning",
                               "Natural Language Processing", "Other (AI and Machine Learning)"}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_focus_export_follows_focus_1_2_and_adds_up(stack):
    h, start, end = stack["history"], stack["start"], stack["end"]
    assert len(SPEC) == 57
    out = report(stack, "--month", _label(start), "--format", "focus", "--billing-account", "acme-ai")
    assert out.returncode == 0, out.stderr
    reader = csv.DictReader(io.StringIO(out.stdout))
    header = list(reader.fieldnames or [])
    rows = list(reader)
    # every FOCUS column, in the specification's order, then custom columns, all x_-prefixed
    assert header[:57] == [name for name, _, _ in SPEC]
    assert header[57:] and all(c.startswith("x_") for c in header[57:])
    for name, _, nulls in SPEC:
        if nulls == "notnull" or name in NOT_NULL_ON_USAGE:
            assert all(r[name] for r in rows), name
    for r in rows:
        assert r["ChargeCategory"] == "Usage" and r["ChargeClass"] == "" and r["ChargeFrequency"] == "Usage-Based"
        assert r["ServiceCategory"] == "AI and Machine Learning"
        assert r["ServiceSubcategory"] in SERVICE_SUBCATEGORIES_OF_AI
        assert r["PricingCategory"] == "Standard" and r["ConsumedUnit"] == r["PricingUnit"] == "Tokens"
        assert r["BillingAccountId"] == "acme-ai" and r["BillingCurrency"] == "USD"
        assert (r["BillingPeriodStart"], r["BillingPeriodEnd"]) == (_iso(start), _iso(end))
        assert _iso(start) <= r["ChargePeriodStart"] < r["ChargePeriodEnd"] <= _iso(end)
        assert r["BilledCost"] == r["EffectiveCost"] == r["ListCost"] == r["ContractedCost"]  # no unit prices
        assert r["ListUnitPrice"] == r["ContractedUnitPrice"] == ""
        assert r["ConsumedQuantity"] == r["PricingQuantity"]
        tags = json.loads(r["Tags"])
        assert tags == {"user_id": r["x_UserId"], "department": r["x_Department"], "service_name": r["x_App"]}
        assert r["SkuId"] == r["SkuPriceId"].split("/")[0]
    # per UTC day and user, the quantities and costs are what the scrapes added
    for day in (start, start + 11 * DAY, start + 20 * DAY, end - DAY):
        got = defaultdict(float)
        cost = defaultdict(float)
        for r in rows:
            if r["ChargePeriodStart"] == _iso(day):
                got[r["x_UserId"]] += float(r["ConsumedQuantity"])
                cost[r["x_UserId"]] += float(r["BilledCost"])
        want = h.truth("llm_token_usage", day, day + DAY, "user_id")
        assert dict(got) == want, _iso(day)
        _close({k: v for k, v in cost.items() if v}, h.truth("llm_cost", day, day + DAY, "user_id"))
    assert sum(float(r["ConsumedQuantity"]) for r in rows) == sum(h.truth("llm_token_usage", start, end,
                                                                          "user_id").values())
    s = json.loads(report(stack, "--month", _label(start), "--format", "json").stdout)
    assert sum(float(r["BilledCost"]) for r in rows) == pytest.approx(s["totals"]["cost"], rel=1e-9)
    unpriced = [r for r in rows if r["SkuId"] == "tiny-chat"]
    assert unpriced and {(float(r["BilledCost"]), r["x_Priced"]) for r in unpriced} == {(0.0, "false")}
