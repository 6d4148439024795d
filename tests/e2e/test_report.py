"""`otel-tokens report` against a real Prometheus scraping the real package (tests/support/report_app.py) with
the rendered quota rules: every row of every format compared with the traffic the test drove."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from otel_tokens import names
from otel_tokens.ops.cli import main
from otel_tokens.ops.report import UNATTRIBUTED, format_money, token_timeline, usage_by
from otel_tokens.prometheus_api import Prometheus
from otel_tokens.quota.calendar import window_end
from tests.support.prometheus_stack import free_port, query, start_prometheus
from tests.support.report_stack import CURRENT, ERRORS, GRANTS, PREVIOUS, QUOTAS, TOP, Calls, running_stack

ROOT = Path(__file__).resolve().parents[2]
PROG = "otel-tokens report: "


REPORT_APP = "report-app"  # the report app's service.name: every call of this stack is that one app's
KEY = {"user": lambda c: c.user, "department": lambda c: c.department, "app": lambda c: REPORT_APP,
       "model": lambda c: c.model}
KINDS = ("user", "department", "app", "model")  # the report's tables, in its order


# --- ground truth, from the traffic alone ----------------------------------------------------------
def _name(kind: str, c: Calls) -> str:
    value = KEY[kind](c)
    return UNATTRIBUTED if value == "-" else value


def expected_rows(kind: str) -> list[dict[str, Any]]:
    grand = sum(c.input + c.output for c in CURRENT)
    rows: dict[str, dict[str, Any]] = {}
    for c in CURRENT:
        r = rows.setdefault(_name(kind, c), {"name": _name(kind, c), "input_tokens": 0, "output_tokens": 0,
                                             "cost": 0.0, "requests": 0})
        r["input_tokens"] += c.input
        r["output_tokens"] += c.output
        r["cost"] += c.cost
        r["requests"] += c.calls
    for user, department, model in ERRORS:
        rows[{"user": user, "department": department, "app": REPORT_APP, "model": model}[kind]]["requests"] += 1
    previous: dict[str, int] = defaultdict(int)
    for c in PREVIOUS:
        previous[_name(kind, c)] += c.input + c.output
    for r in rows.values():
        r["total_tokens"] = r["input_tokens"] + r["output_tokens"]
        r["share"] = r["total_tokens"] / grand
        r["previous_total_tokens"] = previous[r["name"]]
        r["change"] = r["total_tokens"] / previous[r["name"]] - 1 if previous[r["name"]] else None
    ordered = sorted(rows.values(), key=lambda r: (-r["total_tokens"], -r["cost"], r["name"]))
    for rank, r in enumerate(ordered, 1):
        r["rank"] = rank
    return ordered


def expected_totals(calls: list[Calls], errors: int) -> dict[str, Any]:
    inp, out = sum(c.input for c in calls), sum(c.output for c in calls)
    cost = sum(c.cost for c in calls)
    return {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out, "cost": cost,
            "cost_by_currency": {"USD": cost}, "requests": sum(c.calls for c in calls) + errors, "errors": errors,
            "estimated_tokens": 0, "estimated_share": 0.0}


def expected_quotas() -> list[dict[str, Any]]:
    everything = PREVIOUS + CURRENT  # both windows lie inside the user's 24 h and the month (UTC)
    out = []
    for principal, scope in (("user", QUOTAS["users"]), ("department", QUOTAS["departments"])):
        for kind in ("tokens", "cost"):
            usage: dict[str, float] = defaultdict(float)
            for c in everything:  # __unattributed__ is a principal like any other: the default applies
                usage[_name(principal, c)] += c.input + c.output if kind == "tokens" else c.cost
            overrides = {n: lim[kind] for n, lim in scope.get("overrides", {}).items() if kind in lim}
            default = scope.get("default", {}).get(kind)
            who = set(overrides) | (set(usage) if default is not None else set())
            granted: dict[str, float] = defaultdict(float)  # the grants (all of tokens) add to the file's limit
            for granted_scope, n, _, amount in GRANTS:
                if granted_scope == principal and kind == "tokens":
                    granted[n] += amount
            limit = {n: overrides.get(n, default) + granted[n] for n in who}
            rows = [{"principal": principal, "name": n, "quota": kind,
                     "window": "24h" if principal == "user" else "month", "usage": usage.get(n, 0.0),
                     "limit": float(limit[n]), "granted": granted[n], "ratio": usage.get(n, 0.0) / limit[n],
                     "percent": 100 * usage.get(n, 0.0) / limit[n]} for n in who]
            out += sorted(rows, key=lambda q: (-q["ratio"], q["name"]))
    return out


def check_projection(stack: dict[str, Any], quotas: list[dict[str, Any]]) -> None:
    """Users have no projection; a department has one where the rules' burn rate exists at `at` (it reads
    hourly buckets at whole hours: present once the stack has run across an hour), built from it."""
    at = stack["at"]
    moment = datetime.fromtimestamp(at, timezone.utc)
    month_end = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=timezone.utc).timestamp()
    for q in quotas:
        burn = {r["metric"].get("department"): float(r["value"][1])
                for r in query(stack["url"], f"llm_quota:department_{q['quota']}:burn_rate", at)}
        assert q["resets_at"] == (None if q["principal"] == "user" else  # the rolling 24 h has no reset
                                  datetime.fromtimestamp(month_end, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        assert q["window_end_percent"] == q["month_end_percent"]  # every row here is a user's 24 h or a month
        if q["principal"] == "user" or q["name"] not in burn:
            assert (q["burn_rate_per_hour"], q["month_end_percent"], q["runs_out_at"]) == (None, None, None), q
            continue
        rate = burn[q["name"]]
        assert q["burn_rate_per_hour"] == pytest.approx(rate)
        assert q["month_end_percent"] == pytest.approx(100 * (q["usage"] + rate * (month_end - at) / 3600)
                                                       / q["limit"])
        if q["month_end_percent"] >= 100 and q["usage"] < q["limit"]:
            runs_out = round((at + 3600 * (q["limit"] - q["usage"]) / rate) / 60) * 60
            assert q["runs_out_at"] == datetime.fromtimestamp(runs_out, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            assert q["runs_out_at"] is None


def _change_text(change: float | None) -> str:
    return "new" if change is None else f"{100 * change:+.1f} %"


# --- the stack -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield from running_stack(tmp_path_factory)


def report(stack: dict[str, Any], capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = main(["report", "--prometheus", stack["url"], "--window", f"{stack['window']}s", "--top", str(TOP),
                 "--at", f"{stack['at']:.3f}", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def assert_close(got: Any, want: Any, where: str = "") -> None:
    """Equal, floats to 1e-9 relative (costs are float sums), recursively through dicts and lists."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), (where, got, want)
        for key in want:
            assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), (where, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) or isinstance(got, float):
        assert got is not None and got == pytest.approx(want, rel=1e-9, abs=1e-15), (where, got, want)
    else:
        assert got == want, (where, got, want)


# --- the formats ----------------------------------------------------------------------------------
def test_json_every_number(stack, capsys):
    code, out, err = report(stack, capsys, "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["window"]["seconds"] == stack["window"]
    assert data["window"]["end_unix"] == pytest.approx(stack["at"], abs=1e-3)
    assert data["currency"] == "USD"
    totals = data["totals"]
    assert_close({k: totals[k] for k in expected_totals(CURRENT, 1)}, expected_totals(CURRENT, 1), "totals")
    assert_close(totals["previous"], expected_totals(PREVIOUS, 0), "previous")
    assert_close(totals["change"]["total_tokens"], 735 / 130 - 1)
    assert totals["change"]["errors"] is None  # none before
    assert totals["estimated_share"] == 0.0
    for kind, key in (("user", "users"), ("department", "departments"), ("app", "apps"), ("model", "models")):
        expected = expected_rows(kind)
        assert data["counts"][key] == len(expected)
        assert_close(data[key], expected[:TOP], key)
    assert [r["name"] for r in data["users"]] == ["alice", "bob", "carol", "dave", UNATTRIBUTED]
    assert [r["name"] for r in data["departments"]] == ["support", "research", "sales", UNATTRIBUTED]
    assert [r["name"] for r in data["apps"]] == [REPORT_APP] and data["top_app"]["name"] == REPORT_APP
    assert data["quota_rules"] is True
    projection = ("burn_rate_per_hour", "month_end_percent", "window_end_percent", "runs_out_at", "resets_at")
    assert_close([{k: v for k, v in q.items() if k not in projection} for q in data["quotas"]], expected_quotas(),
                 "quotas")
    check_projection(stack, data["quotas"])
    assert_close([(q["name"], q["percent"]) for q in data["quotas"]],
                 [("alice", 50.0), ("zed", 0.0), ("bob", 24.0), ("support", 27.5), ("research", 100 * 260 / 1500),
                  ("sales", 3.0), (UNATTRIBUTED, 2.5), ("support", 9.6)])  # calls with no department: the default
    # budget; alice 400 tokens of 500 + 300 granted, research 260 of the default 1,000 + 500 granted
    assert [(q["name"], q["limit"], q["granted"]) for q in data["quotas"] if q["granted"]] == [
        ("alice", 800, 300), ("research", 1500, 500)]
    assert data["headline"].startswith(f"{stack['window']}s ending ")


def test_csv_every_row(stack, capsys):
    code, out, err = report(stack, capsys, "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0])[:7] == ["kind", "name", "input_tokens", "output_tokens", "total_tokens", "cost", "share"]

    def number(text: str) -> float | None:
        return None if text == "" else float(text)

    total = expected_totals(CURRENT, 1)
    assert rows[0]["kind"] == "total" and rows[0]["name"] == "all"
    keys = ("input_tokens", "output_tokens", "total_tokens", "cost", "requests", "errors")
    assert_close({k: number(rows[0][k]) for k in (*keys, "previous_total_tokens")},
                 {**{k: float(total[k]) for k in keys}, "previous_total_tokens": 130.0}, "total row")
    expected = [(kind, r) for kind in KINDS for r in expected_rows(kind)[:TOP]]
    entity_rows = [r for r in rows[1:] if not r["kind"].endswith("_quota")]
    assert len(entity_rows) == len(expected)
    for row, (kind, want) in zip(entity_rows, expected, strict=True):
        assert (row["kind"], row["name"], row["currency"]) == (kind, want["name"], "USD")
        got = {k: number(row[k]) for k in ("rank", "input_tokens", "output_tokens", "total_tokens", "cost", "share",
                                           "requests", "previous_total_tokens", "change")}
        assert_close(got, {k: None if want[k] is None else float(want[k]) for k in got}, f"{kind} {want['name']}")
    quota_rows = [r for r in rows[1:] if r["kind"].endswith("_quota")]
    assert_close([{"principal": r["kind"].removesuffix("_quota"), "name": r["name"], "quota": r["quota"],
                   "window": r["window"], "usage": float(r["usage"]), "limit": float(r["limit"]),
                   "granted": float(r["granted"]), "percent": float(r["percent"])} for r in quota_rows],
                 [{k: v for k, v in q.items() if k != "ratio"} for q in expected_quotas()], "quota rows")


def _md_name(name: str) -> str:
    return name.replace("_", "\\_")  # the test's names hold no other markdown character


def _row_cells(r: dict[str, Any]) -> list[str]:
    return [str(r["rank"]), r["name"], f"{r['input_tokens']:,}", f"{r['output_tokens']:,}", f"{r['total_tokens']:,}",
            f"{100 * r['share']:.1f} %", format_money(r["cost"]), f"{r['requests']:,}", _change_text(r["change"])]


def _quota_cells(q: dict[str, Any]) -> list[str]:
    """Usage, limit (with what the grants add: "800 (+300 granted)") and percent."""
    fmt = (lambda v: f"{round(v):,}") if q["quota"] == "tokens" else format_money
    limit = fmt(q["limit"]) + (f" (+{fmt(q['granted'])} granted)" if q["granted"] else "")
    return [fmt(q["usage"]), limit, f"{q['percent']:.1f} %"]


def test_markdown_numbers(stack, capsys):
    code, out, err = report(stack, capsys, "--format", "markdown")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "# LLM usage report"
    assert (f"{stack['window']}s ending" in lines[2] and "735 tokens (+465.4 % on the previous" in lines[2]
            and f"USD {format_money(expected_totals(CURRENT, 1)['cost'])}" in lines[2]
            and "19 requests (1 error)" in lines[2]
            and "mostly department support (61.2 %), top user alice (40.8 %), mostly from app report-app "
                "(100.0 % of the cost)." in lines[2]), lines[2]
    now, before = expected_totals(CURRENT, len(ERRORS)), expected_totals(PREVIOUS, 0)
    for label, key in (("input tokens", "input_tokens"), ("output tokens", "output_tokens"),
                       ("total tokens", "total_tokens"), ("requests", "requests")):
        change = _change_text(now[key] / before[key] - 1)
        assert f"| {label} | {now[key]:,} | {before[key]:,} | {change} |" in lines
    assert (f"| cost (USD) | {format_money(now['cost'])} | {format_money(before['cost'])} | "
            f"{_change_text(now['cost'] / before['cost'] - 1)} |") in lines
    assert "| errors | 1 | 0 | new |" in lines
    assert "| estimated tokens | 0 (0.0 %) | 0 (0.0 %) |  |" in lines
    for kind in KINDS:
        rows = [line for line in lines if re.match(r"\| \d+ \| ", line)]
        for r in expected_rows(kind)[:TOP]:  # names as markdown text: __x__ would render as a bold x
            cells = [_md_name(r["name"]), *_row_cells(r)[2:]]
            assert "| " + " | ".join([str(r["rank"]), *cells]) + " |" in rows, (kind, r)
    assert "## Top users by tokens (5 of 7)" in lines
    for q in expected_quotas():
        cells = _quota_cells(q)
        # then the month-end projection (empty for users; for a department once the rules' burn rate exists)
        assert any(line.startswith(f"| {_md_name(q['name'])} |") and " | ".join(cells) + " | " in line
                   for line in lines), q


def test_table_numbers(stack, capsys):
    code, out, err = report(stack, capsys)  # the default format: rich
    assert code == 0, err
    assert "735 tokens (+465.4 % on the previous" in " ".join(out.split())
    for kind in KINDS:
        for r in expected_rows(kind)[:TOP]:
            pattern = r"\s+".join(re.escape(cell).replace(r"\ ", r"\s+") for cell in _row_cells(r))
            assert re.search(rf"(?m)^\s*{pattern}\s*$", out), (kind, r, out)
    assert not re.search(r"\berin\b", out)  # 6th user: outside the top 5
    month_end = window_end("month", stack["at"], "UTC")
    for q in expected_quotas():
        prefix = f"{q['principal']} {q['name']}"
        pattern = r"\s+".join(re.escape(c).replace(r"\ ", r"\s+") for c in _quota_cells(q))
        resets = "—" if q["window"] == "24h" else datetime.fromtimestamp(month_end, timezone.utc).strftime(
            "%Y-%m-%d\\s+00:00\\s+UTC")  # the rolling 24 h never resets; the month at the next one's midnight
        assert re.search(rf"(?m)^\s*{re.escape(prefix)}\s.*{pattern}\s+{resets}(\s+\S.*)?\s*$", out), (q, out)


def test_png_and_timeline(stack, capsys):
    import matplotlib.image

    png = stack["tmp"] / "usage.png"
    code, _, err = report(stack, capsys, "--format", "json", "--png", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    # what the left panel draws: cumulative exact bucket sums ending at each user's window total
    users = [r["name"] for r in expected_rows("user")[:TOP] if r["name"] != UNATTRIBUTED]
    times, lines = token_timeline(Prometheus(stack["url"]), stack["at"], stack["window"], users)
    assert times[0] == pytest.approx(stack["at"] - stack["window"]) and times[-1] == pytest.approx(stack["at"])
    for r in expected_rows("user")[:TOP]:
        if r["name"] in lines:
            line = lines[r["name"]]
            assert line[0] == 0 and line[-1] == r["total_tokens"] and line == sorted(line), (r["name"], line)


def test_exact_sums_against_increase(stack):
    """Why the report does not use increase(): it extrapolates and drops a new series' first value."""
    window = f"{stack['window']}s"
    exact = sum(float(r["value"][1]) for r in query(
        stack["url"], usage_by(names.PROM_LLM_TOKEN_USAGE, ["gen_ai_token_type"], window), stack["at"]))
    naive = sum(float(r["value"][1]) for r in query(
        stack["url"], f"sum(increase({names.PROM_LLM_TOKEN_USAGE}[{window}]))", stack["at"]))
    assert exact == 735
    print(f"\nwindow {window}: exact {exact:.0f} tokens, increase() {naive:.1f} ({100 * (naive / exact - 1):+.1f} %)")


# --- bad invocations: one line on stderr, a non-zero status, never a traceback ------------------------
def _one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PROG), err
    return lines[0]


def test_unreachable_prometheus(capsys):
    port = free_port()  # nothing listens there any more
    assert main(["report", "--prometheus", f"http://127.0.0.1:{port}"]) == 3
    out, err = capsys.readouterr()
    assert "cannot reach Prometheus" in _one_line(err) and out == ""


def test_empty_window(stack, capsys):
    code = main(["report", "--prometheus", stack["url"], "--window", "30s", "--at", str(stack["before"])])
    out, err = capsys.readouterr()
    assert code == 1 and "no LLM traffic in the 30s ending" in _one_line(err) and out == ""


def test_prometheus_without_the_metrics(stack, tmp_path, capsys):
    url, prom = start_prometheus(tmp_path, stack["prometheus"], [f"127.0.0.1:{free_port()}"])
    try:
        code = main(["report", "--prometheus", url])
    finally:
        prom.terminate()
        prom.wait(timeout=10)
    out, err = capsys.readouterr()
    assert code == 1 and f"has no {names.PROM_LLM_TOKEN_USAGE} metric" in _one_line(err) and out == ""


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse-level errors exit from inside the parser
        return int(exit_.code or 0)


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "xml"], "unknown format 'xml'"),
    (["--window", "3x"], "bad window '3x'"),
    (["--window", "0h"], "bad window '0h'"),
    (["--top", "0"], "bad --top '0'"),
    (["--at", "yesterday"], "bad --at 'yesterday'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--top"], "argument --top: expected one argument"),
])
def test_usage_errors(args, message, capsys):
    assert _exit_code(["report", "--prometheus", "http://127.0.0.1:9", *args]) == 2
    out, err = capsys.readouterr()
    assert message in _one_line(err) and out == ""


def test_missing_prometheus_url_and_the_real_entry_point():
    result = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "report", "--window", "24h"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--prometheus URL is required" in _one_line(result.stderr)
    result = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "report", "--prometheus",
                             f"http://127.0.0.1:{free_port()}", "--window", "7x"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "bad window '7x'" in _one_line(result.stderr)


def test_the_package_imports_without_the_report_extras():
    code = ("import sys; sys.modules['rich'] = None; sys.modules['matplotlib'] = None; "
            "import otel_tokens, otel_tokens.ops.cli, otel_tokens.ops.report; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr

