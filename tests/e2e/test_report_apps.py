"""The app (service.name) in `otel-tokens report`: two apps, each its own instrumented process charged as its
OTEL_SERVICE_NAME (kb-chat: few tokens on a dear model; batch-summarize: more tokens on a cheap one), and a
process that records no app (the package before it wrote service.name), all scraped by a real Prometheus with
the rendered app and department quota rules. The digest's top-apps table in every format, its "mostly from
app" (by cost, not tokens), the quota table's app rows and their projection, the statement's app rows and
lines, and the FOCUS export's app are compared with the traffic the test drove."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_tokens import names
from otel_tokens.ops.cli import main
from otel_tokens.ops.report import UNATTRIBUTED, format_money
from otel_tokens.ops.rules import render_text
from otel_tokens.quota.calendar import window_end
from otel_tokens.quota.file import parse_quotas
from tests.support.apps_app import PRICE_PER_TOKEN, PROMPT
from tests.support.binaries import require_binary
from tests.support.openai_server import OpenAIServer
from tests.support.prometheus_stack import free_port, query, start_prometheus, stop_processes
from tests.support.smtp_sink import SmtpSink

ROOT = Path(__file__).resolve().parents[2]
KB, BATCH = "kb-chat", "batch-summarize"
LEGACY = UNATTRIBUTED  # the process that records no app: the report's one row for series without service_name


@dataclass(frozen=True)
class Traffic:
    user: str
    department: str
    model: str
    calls: int
    max_tokens: int


TRAFFIC = {
    KB: [Traffic("alice", "support", "kb-large", 3, 50), Traffic("bob", "support", "kb-large", 2, 20)],
    BATCH: [Traffic("svc-batch", "research", "bulk-small", 6, 120), Traffic("bob", "support", "bulk-small", 1, 30)],
    LEGACY: [Traffic("carol", "sales", "bulk-small", 1, 10)],
}
QUOTAS = {"apps": {"default": {"tokens": 100_000}, "overrides": {KB: {"cost": 0.05}}},
          "departments": {"default": {"cost": 1}}}
BURN = {("app", "service_name", KB): 0.01, ("department", "department", "support"): 0.5}  # USD an hour


# --- ground truth, from the traffic and the server's own token counts -----------------------------------------
def _truth(server: OpenAIServer) -> dict[str, dict[str, Any]]:
    """Per app: input and output tokens, cost, requests."""
    out: dict[str, dict[str, Any]] = {}
    for app, traffic in TRAFFIC.items():
        row = out[app] = {"input_tokens": 0, "output_tokens": 0, "cost": 0.0, "requests": 0}
        for t in traffic:
            prompt = server.prompt_tokens(t.model, PROMPT)
            completion = server.completion_tokens(t.model, " a" * t.max_tokens)
            price_in, price_out = PRICE_PER_TOKEN[t.model]
            row["input_tokens"] += t.calls * prompt
            row["output_tokens"] += t.calls * completion
            row["cost"] += t.calls * (prompt * price_in + completion * price_out)
            row["requests"] += t.calls
    return out


def expected_app_rows(truth: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    grand = sum(r["input_tokens"] + r["output_tokens"] for r in truth.values())
    rows = [{"name": app, **r, "total_tokens": r["input_tokens"] + r["output_tokens"],
             "share": (r["input_tokens"] + r["output_tokens"]) / grand, "previous_total_tokens": 0, "change": None}
            for app, r in truth.items()]
    rows.sort(key=lambda r: (-r["total_tokens"], -r["cost"], r["name"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows


# --- the stack ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    prometheus = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("report-apps")
    server = OpenAIServer(generate_as_asked=0).start()
    ports = {app: free_port() for app in TRAFFIC}
    processes: list[subprocess.Popen[Any]] = []
    try:
        for app, port in ports.items():
            env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OTEL_SERVICE_NAME": app}
            extra = ["--no-app"] if app == LEGACY else []
            processes.append(subprocess.Popen([sys.executable, "-m", "tests.support.apps_app", str(port), *extra],
                                              cwd=ROOT, env=env, text=True, stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=open(tmp / f"{port}.log", "w")))
        rules = tmp / "rules"
        rules.mkdir()
        (rules / "quotas.yml").write_text(render_text(parse_quotas(QUOTAS, "apps test quotas"), for_="1s"))
        # the burn rates the rules compute from hourly buckets, which a stack a few seconds old has none of
        (rules / "burn.yml").write_text(yaml.safe_dump({"groups": [{"name": "burn", "rules": [
            {"record": f"llm_quota:{scope}_cost:burn_rate", "expr": f"vector({rate})", "labels": {label: name}}
            for (scope, label, name), rate in BURN.items()]}]}))
        url, prom = start_prometheus(tmp, prometheus, [f"127.0.0.1:{p}" for p in ports.values()],
                                     str(rules / "*.yml"))
        processes.append(prom)
        for app, process in zip(TRAFFIC, processes, strict=False):
            assert process.stdout is not None and process.stdout.readline().strip() == "ready", (
                (tmp / f"{ports[app]}.log").read_text())
        deadline = time.monotonic() + 30
        while len([r for r in query(url, 'up{job="app"} == 1')]) < len(ports):  # every app scraped once
            assert time.monotonic() < deadline
            time.sleep(0.2)
        since = math.ceil(time.time()) + 1  # the statement's start: after Prometheus's oldest sample
        time.sleep(max(0.0, since - time.time()) + 0.1)
        for app, process in zip(TRAFFIC, processes, strict=False):
            assert process.stdin is not None
            process.stdin.write("".join(f"{t.user} {t.department} {t.model} {t.calls} {t.max_tokens}\n"
                                        for t in TRAFFIC[app]))
            process.stdin.flush()
        for app, process in zip(TRAFFIC, processes, strict=False):
            for _ in TRAFFIC[app]:
                assert process.stdout is not None and process.stdout.readline().strip() == "done"
        truth = _truth(server)
        tokens = sum(r["input_tokens"] + r["output_tokens"] for r in truth.values())
        requests = sum(r["requests"] for r in truth.values())
        deadline = time.monotonic() + 30
        while True:  # Prometheus holds the final values and the rules have recorded the app limits
            got = [sum(float(r["value"][1]) for r in query(url, f"sum({metric})"))
                   for metric in (names.PROM_LLM_TOKEN_USAGE, names.PROM_LLM_REQUESTS)]
            if got == [tokens, requests] and query(url, "llm_quota:app_cost:limit_override"):
                break
            assert time.monotonic() < deadline, (got, tokens, requests)
            time.sleep(0.2)
        until = math.ceil(time.time()) + 1
        time.sleep(max(0.0, until - time.time()) + 1.2)  # a scrape after the period's end
        yield {"url": url, "since": since, "until": until, "truth": truth, "tmp": tmp}
    finally:
        stop_processes(processes)
        server.stop()


def digest(stack: dict[str, Any], capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code = main(["report", "--prometheus", stack["url"], "--window", f"{stack['until'] - stack['since']}s",
                 "--at", str(stack["until"]), "--top", "5", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def statement(stack: dict[str, Any], capsys: pytest.CaptureFixture[str], fmt: str) -> str:
    code = main(["report", "--prometheus", stack["url"], "--from", str(stack["since"]), "--to", str(stack["until"]),
                 "--format", fmt])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _close(got: Any, want: Any, where: str = "") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), (where, got, want)
        for key in want:
            _close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-15), (where, got, want)
    else:
        assert got == want, (where, got, want)


def _headline_app(truth: dict[str, dict[str, Any]]) -> str:
    cost = sum(r["cost"] for r in truth.values())
    return f"mostly from app {KB} ({100 * truth[KB]['cost'] / cost:.1f} % of the cost)"


# --- the digest ----------------------------------------------------------------------------------------------------
def test_the_digest_has_a_top_apps_table_equal_to_the_truth(stack, capsys):
    truth = stack["truth"]
    want = expected_app_rows(truth)
    assert [r["name"] for r in want] == [BATCH, KB, LEGACY]  # batch spent more tokens, kb-chat more money
    data = json.loads(digest(stack, capsys, "--format", "json"))
    _close(data["apps"], want, "apps")
    assert data["counts"]["apps"] == 3
    _close(data["top_app"], next(r for r in want if r["name"] == KB), "top_app")
    assert _headline_app(truth) in data["headline"]
    legacy_share = next(r for r in want if r["name"] == LEGACY)["share"]
    assert (f"{100 * legacy_share:.1f} % of the tokens carry no service_name (written before otel-tokens recorded "
            "the app, or by a Recorder built without Settings.app)") in data["notes"]
    # the other tables are unchanged by the app: bob's two apps are one user row
    bob = next(r for r in data["users"] if r["name"] == "bob")
    assert bob["requests"] == 3

    rows = [r for r in csv.DictReader(io.StringIO(digest(stack, capsys, "--format", "csv"))) if r["kind"] == "app"]
    assert [(r["name"], int(r["total_tokens"]), r["rank"]) for r in rows] == [
        (r["name"], r["total_tokens"], str(r["rank"])) for r in want]
    _close([float(r["cost"]) for r in rows], [r["cost"] for r in want], "csv cost")

    markdown = digest(stack, capsys, "--format", "markdown")
    assert "## Top apps by tokens" in markdown and _headline_app(truth) in markdown
    table = " ".join(digest(stack, capsys).split())  # rich, whitespace folded
    assert "Top apps by tokens" in table and _headline_app(truth) in table
    for r in want:
        name = r["name"].replace("_", "\\_")
        cells = [str(r["rank"]), name, f"{r['input_tokens']:,}", f"{r['output_tokens']:,}", f"{r['total_tokens']:,}",
                 f"{100 * r['share']:.1f} %", format_money(r["cost"]), f"{r['requests']:,}", "new"]
        assert "| " + " | ".join(cells) + " |" in markdown, (r, markdown)
        assert " ".join([*cells[:1], r["name"], *cells[2:]]) in table, (r, table)


def test_the_quota_table_has_the_apps_with_their_projection(stack, capsys):
    truth, at = stack["truth"], stack["until"]
    data = json.loads(digest(stack, capsys, "--format", "json"))
    apps = [q for q in data["quotas"] if q["principal"] == "app"]
    tokens = {app: r["input_tokens"] + r["output_tokens"] for app, r in truth.items() if app != LEGACY}
    want = [{"principal": "app", "name": app, "quota": "tokens", "window": "month", "usage": tokens[app],
             "limit": 100_000, "percent": 100 * tokens[app] / 100_000}
            for app in sorted(tokens, key=lambda a: (-tokens[a], a))]  # series without an app are no app's
    want.append({"principal": "app", "name": KB, "quota": "cost", "window": "month", "usage": truth[KB]["cost"],
                 "limit": 0.05, "percent": 100 * truth[KB]["cost"] / 0.05})
    _close([{k: q[k] for k in want[0]} for q in apps], want, "app quotas")
    month_end = window_end("month", at, "UTC")
    for q in data["quotas"]:
        if q["window"] != "month":
            continue
        burn = {r["metric"].get("service_name" if q["principal"] == "app" else "department"): float(r["value"][1])
                for r in query(stack["url"], f"llm_quota:{q['principal']}_{q['quota']}:burn_rate", at)}
        if q["name"] not in burn:
            assert q["burn_rate_per_hour"] is None, q
            continue
        rate = burn[q["name"]]  # the scope's own: a department's rate never lands on an app row
        assert q["burn_rate_per_hour"] == pytest.approx(rate), q
        assert q["window_end_percent"] == pytest.approx(
            100 * (q["usage"] + rate * (month_end - at) / 3600) / q["limit"]), q
    kb_cost = next(q for q in apps if q["name"] == KB and q["quota"] == "cost")
    assert kb_cost["burn_rate_per_hour"] is not None  # projected, from the app's burn rate
    markdown = digest(stack, capsys, "--format", "markdown")
    assert "### Apps" in markdown and "| app | quota | window |" in markdown
    moment = datetime.fromtimestamp(month_end, timezone.utc).strftime("%Y-%m-%d 00:00 UTC")
    assert re.search(rf"(?m)^\| {KB} \| cost \(USD\) \| this month \| .* \| {moment} \|", markdown), markdown


def test_the_mailed_digest_says_which_app_spent_most(stack, capsys, monkeypatch):
    monkeypatch.setenv("SMTP_REQUIRE_TLS", "false")
    monkeypatch.setenv("SMTP_FROM", "otel-tokens@example.test")
    monkeypatch.setenv("MPLCONFIGDIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "otel-tokens-mpl"))
    png = stack["tmp"] / "apps.png"
    with SmtpSink() as sink:
        monkeypatch.setenv("SMTP_SMARTHOST", sink.smarthost)
        digest(stack, capsys, "--mail-to", "finance@example.test", "--png", str(png))
        (mail,) = sink.wait()
    assert _headline_app(stack["truth"]) in " ".join(mail.message["Subject"].split())
    text = mail.message.get_body(("plain",)).get_content()
    html = mail.message.get_body(("html",)).get_content()
    assert "## Top apps by tokens" in text and "<h2>Top apps by tokens" in html and f"<td class=\"t\">{KB}</td>" in html
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")  # three panels: users, departments, apps


# --- statements and FOCUS --------------------------------------------------------------------------------------------
def test_the_statement_and_focus_carry_the_app(stack, capsys):
    truth = stack["truth"]
    s = json.loads(statement(stack, capsys, "json"))
    assert s["statement"]["complete"] is True
    got = {r["name"]: {k: r[k] for k in ("input_tokens", "output_tokens", "cost", "requests")} for r in s["apps"]}
    _close(got, truth, "statement apps")
    by_app: dict[str, int] = defaultdict(int)
    for x in s["lines"]:
        by_app[x["app"]] += x["tokens"]
    assert dict(by_app) == {app: r["input_tokens"] + r["output_tokens"] for app, r in truth.items()}
    # bob called from two apps: two lines of his, one per app
    assert {x["app"] for x in s["lines"] if x["user"] == "bob"} == {KB, BATCH}
    markdown = statement(stack, capsys, "markdown")
    assert "## Apps" in markdown and f"| {KB} |" in markdown

    rows = list(csv.DictReader(io.StringIO(statement(stack, capsys, "focus"))))
    tokens: dict[str, float] = defaultdict(float)
    cost: dict[str, float] = defaultdict(float)
    for r in rows:
        assert json.loads(r["Tags"])["service_name"] == r["x_App"]
        assert r["ServiceName"] == "OpenAI LLM"  # the provider's offering, not the app
        tokens[r["x_App"]] += float(r["ConsumedQuantity"])
        cost[r["x_App"]] += float(r["BilledCost"])
    assert dict(tokens) == {app: r["input_tokens"] + r["output_tokens"] for app, r in truth.items()}
    _close(dict(cost), {app: r["cost"] for app, r in truth.items()}, "focus cost")
