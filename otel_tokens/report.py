"""`otel-tokens report`: a usage digest read from Prometheus, for people who do not open Grafana.

"24h ending 2025-06-02 09:00 UTC: 1,248,900 tokens (+12.0 % on the previous 24h), USD 12.34,
3,210 requests (2 errors); mostly department support (61.0 %), top user alice (22.0 %)."

Everything comes from Prometheus's HTTP API (instant queries at `--at`, default now) over the
metrics the package emits and the quota rules' recorded limits. Window sums are exact: they use
the quota rules' own construction (`rules.usage_over`: per series, the last value minus the value
at the window's start, a series born inside the window from zero, `increase()` only after a
counter reset), never bare `increase()`, which extrapolates to the window's edges and drops a new
series' first value. The previous window of the same length is the same queries evaluated one
window earlier, so the two never overlap.

rich (the table) and matplotlib (`--png`) are optional (`pip install 'otel-tokens[report]'`) and
imported only when used.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, TextIO

from . import names
from .quotas import KINDS
from .rules import series, usage_over

PROG = "otel-tokens report"
FORMATS = ("table", "markdown", "json", "csv")
USAGE_ERROR, DATA_ERROR, CONNECTION_ERROR = 2, 1, 3

TOKENS, COST, REQUESTS = names.PROM_LLM_TOKEN_USAGE, names.PROM_LLM_COST, names.PROM_LLM_REQUESTS
_COUNTER = {"tokens": TOKENS, "cost": COST}
USER = names.prometheus_label(names.USER_ID)
DEPARTMENT = names.prometheus_label(names.DEPARTMENT)
MODEL = names.prometheus_label(names.GEN_AI_REQUEST_MODEL)
TOKEN_TYPE = names.prometheus_label(names.GEN_AI_TOKEN_TYPE)
SOURCE = names.prometheus_label(names.LLM_USAGE_SOURCE)
OPERATION = names.prometheus_label(names.GEN_AI_OPERATION_NAME)
ERROR = names.prometheus_label(names.ERROR_TYPE)
CURRENCY = names.prometheus_label(names.CURRENCY)
DIMENSIONS = {"user": USER, "department": DEPARTMENT, "model": MODEL}
PRINCIPALS = {"user": USER, "department": DEPARTMENT}  # quota principals, as in otel_tokens.rules
USER_QUOTA_WINDOW = "24h"  # users: rolling 24 h; departments: calendar month (UTC), see otel_tokens.rules
UNATTRIBUTED = "(unattributed)"  # usage whose series carries no value for the dimension
MAX_BUCKETS = 96  # points of the --png timeline

_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_DURATION = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class ReportError(Exception):
    """One line for stderr and the exit status: 2 usage, 1 data, 3 connection."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --- durations ----------------------------------------------------------------------------------
def parse_window(text: str) -> float:
    """Seconds in a Prometheus duration such as 24h, 7d, 90m, 1h30m."""
    if not isinstance(text, str) or not _DURATION.fullmatch(text.strip()):
        raise ReportError(f"bad window {text!r}: use a Prometheus duration such as 24h, 7d, 90m or 1h30m",
                          USAGE_ERROR)
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text.strip()))
    if seconds <= 0:
        raise ReportError(f"bad window {text!r}: it must be longer than zero", USAGE_ERROR)
    return float(seconds)


def promql_duration(seconds: float) -> str:
    """The shortest exact PromQL duration for a number of seconds (rounded to milliseconds)."""
    ms = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def human_duration(seconds: float) -> str:
    text, rest = "", round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if rest >= size:
            text += f"{rest // size}{unit}"
            rest %= size
    return text or "0s"


def usage_by(counter: str, labels: Sequence[str], window: str) -> str:
    """`rules.usage_over` (exact per-series window sums, as the quota rules compute them) summed by
    several labels, e.g. user x token type; series are filtered on the first label."""
    return usage_over(counter, labels[0], window, by=labels)


# --- Prometheus HTTP API --------------------------------------------------------------------------
class Prometheus:
    def __init__(self, url: str, timeout: float = 60.0) -> None:
        url = url.strip()
        if "://" not in url:
            url = "http://" + url
        if not url.startswith(("http://", "https://")):
            raise ReportError(f"bad Prometheus URL {url!r}: use http://host:port", USAGE_ERROR)
        self.url = url.rstrip("/")
        self.timeout = timeout

    def get(self, path: str, params: Sequence[tuple[str, str]]) -> Any:
        target = f"{self.url}{path}?{urllib.parse.urlencode(list(params))}"
        try:
            with urllib.request.urlopen(target, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                detail = json.loads(body).get("error") or error.reason
            except (ValueError, AttributeError):
                raise ReportError(f"{self.url} is not a Prometheus HTTP API (HTTP {error.code} for {path})",
                                  CONNECTION_ERROR) from None
            raise ReportError(f"Prometheus at {self.url} refused {path}: {detail}", DATA_ERROR) from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise ReportError(f"cannot reach Prometheus at {self.url}: {reason}", CONNECTION_ERROR) from None
        try:
            payload = json.loads(body)
            if payload["status"] != "success":
                raise ReportError(f"Prometheus at {self.url} answered {path} with an error: "
                                  f"{payload.get('error')}", DATA_ERROR)
            return payload["data"]
        except (ValueError, KeyError, TypeError):
            raise ReportError(f"{self.url} is not a Prometheus HTTP API (unreadable answer to {path})",
                              CONNECTION_ERROR) from None

    def instant(self, promql: str, at: float) -> list[tuple[dict[str, str], float]]:
        data = self.get("/api/v1/query", [("query", promql), ("time", _timestamp(at))])
        if data.get("resultType") != "vector":
            return []
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    def range(self, promql: str, start: float, end: float, step: float
              ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        data = self.get("/api/v1/query_range", [("query", promql), ("start", _timestamp(start)),
                                                ("end", _timestamp(end)), ("step", _timestamp(step))])
        return [(item["metric"], [(float(t), float(v)) for t, v in item["values"]]) for item in data["result"]]

    def present(self, metrics: Iterable[str]) -> set[str]:
        """Which of these metric names Prometheus holds any series of (at any time)."""
        wanted = list(metrics)
        matcher = '{__name__=~"' + "|".join(re.escape(m) for m in wanted) + '"}'
        found = self.get("/api/v1/label/__name__/values", [("match[]", matcher)])
        return {m for m in wanted if m in set(found or ())}


def _timestamp(t: float) -> str:
    return f"{t:.3f}"


# --- the report -----------------------------------------------------------------------------------
@dataclass
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    cost_by_currency: dict[str, float] = field(default_factory=dict)
    requests: int | None = None
    errors: int | None = None
    estimated_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def estimated_share(self) -> float:
        return self.estimated_tokens / self.total_tokens if self.total_tokens else 0.0


@dataclass
class Row:
    """One user, department or model in the window."""

    kind: str
    name: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    requests: int | None = None
    previous_total_tokens: int = 0
    share: float = 0.0
    rank: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def change(self) -> float | None:
        return _change(self.total_tokens, self.previous_total_tokens)


@dataclass
class QuotaRow:
    principal: str  # user | department
    name: str
    quota: str  # tokens | cost
    window: str  # 24h | month
    usage: float  # an int for tokens
    limit: float

    @property
    def ratio(self) -> float:
        return self.usage / self.limit

    @property
    def percent(self) -> float:
        return 100.0 * self.ratio


@dataclass
class Report:
    prometheus: str
    at: float
    window_seconds: float
    top: int
    currency: str | None
    totals: Totals
    previous: Totals
    rows: dict[str, list[Row]]  # kind -> top rows
    counts: dict[str, int]  # kind -> how many had usage
    quotas: list[QuotaRow]
    quota_rules: bool
    notes: list[str] = field(default_factory=list)
    window_text: str | None = None  # the window as the user wrote it (24h rather than 1d)

    @property
    def window(self) -> str:
        return self.window_text or human_duration(self.window_seconds)

    @property
    def start(self) -> float:
        return self.at - self.window_seconds


def _change(current: float | None, previous: float | None) -> float | None:
    if current is None or previous is None or previous == 0:
        return None
    return current / previous - 1.0


def _int(value: float) -> int:
    return round(value)


def _cost(value: float) -> float:
    return round(value, 12)  # drop float noise from adding many small costs


def _queries(have: set[str]) -> dict[str, tuple[str, tuple[str, ...]]]:
    queries: dict[str, tuple[str, tuple[str, ...]]] = {"tokens": (TOKENS, (TOKEN_TYPE, SOURCE))}
    for kind, label in DIMENSIONS.items():
        queries[f"tokens/{kind}"] = (TOKENS, (label, TOKEN_TYPE))
    if COST in have:
        queries["cost"] = (COST, (CURRENCY,))
        for kind, label in DIMENSIONS.items():
            queries[f"cost/{kind}"] = (COST, (label, CURRENCY))
    if REQUESTS in have:
        queries["requests"] = (REQUESTS, (OPERATION,))
        queries["errors"] = (REQUESTS, (ERROR,))
        for kind, label in DIMENSIONS.items():
            queries[f"requests/{kind}"] = (REQUESTS, (label,))
    return queries


Sums = dict[str, dict[tuple[str, ...], float]]


def _window_sums(prom: Prometheus, have: set[str], window: str, ats: Sequence[float]) -> list[Sums]:
    """For each evaluation time, every query's exact window sums keyed by its label values."""
    queries = _queries(have)
    jobs = [(i, key, counter, labels) for i in range(len(ats)) for key, (counter, labels) in queries.items()]

    def run(job: tuple[int, str, str, tuple[str, ...]]) -> dict[tuple[str, ...], float]:
        i, _, counter, labels = job
        return {tuple(metric.get(label, "") for label in labels): value
                for metric, value in prom.instant(usage_by(counter, labels, window), ats[i])}

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, jobs))
    out: list[Sums] = [{} for _ in ats]
    for (i, key, _, _), result in zip(jobs, results, strict=True):
        out[i][key] = result
    return out


def _totals(sums: Sums) -> Totals:
    totals = Totals()
    for (token_type, source), value in sums["tokens"].items():
        if token_type == names.TOKEN_TYPE_INPUT:
            totals.input_tokens += _int(value)
        elif token_type == names.TOKEN_TYPE_OUTPUT:
            totals.output_tokens += _int(value)
        else:
            continue
        if source == names.SOURCE_ESTIMATED:
            totals.estimated_tokens += _int(value)
    if "cost" in sums:
        by_currency: dict[str, float] = defaultdict(float)
        for (currency,), value in sums["cost"].items():
            by_currency[currency or "?"] += value
        totals.cost_by_currency = {c: _cost(v) for c, v in sorted(by_currency.items())}
        totals.cost = _cost(sum(by_currency.values()))
    if "requests" in sums:
        totals.requests = sum(_int(v) for v in sums["requests"].values())
        totals.errors = sum(_int(v) for v in sums["errors"].values())
    return totals


def _rows(kind: str, current: Sums, previous: Sums, totals: Totals, before: Totals) -> list[Row]:
    """Every entity of one dimension with usage in the window, plus the unattributed rest."""
    rows: dict[str, Row] = {}

    def row(name: str) -> Row:
        if name not in rows:
            rows[name] = Row(kind, name, cost=0.0 if "cost" in current else None,
                             requests=0 if "requests" in current else None)
        return rows[name]

    for (name, token_type), value in current[f"tokens/{kind}"].items():
        if token_type == names.TOKEN_TYPE_INPUT:
            row(name).input_tokens += _int(value)
        elif token_type == names.TOKEN_TYPE_OUTPUT:
            row(name).output_tokens += _int(value)
    for (name, _currency), value in current.get(f"cost/{kind}", {}).items():
        r = row(name)
        r.cost = (r.cost or 0.0) + value
    for (name,), value in current.get(f"requests/{kind}", {}).items():
        r = row(name)
        r.requests = (r.requests or 0) + _int(value)
    previous_tokens: dict[str, int] = defaultdict(int)
    for (name, token_type), value in previous[f"tokens/{kind}"].items():
        if token_type in (names.TOKEN_TYPE_INPUT, names.TOKEN_TYPE_OUTPUT):
            previous_tokens[name] += _int(value)

    rest = Row(kind, UNATTRIBUTED,
               input_tokens=totals.input_tokens - sum(r.input_tokens for r in rows.values()),
               output_tokens=totals.output_tokens - sum(r.output_tokens for r in rows.values()),
               cost=None if totals.cost is None else totals.cost - sum(r.cost or 0.0 for r in rows.values()),
               requests=None if totals.requests is None else totals.requests - sum(r.requests or 0
                                                                                  for r in rows.values()),
               previous_total_tokens=before.total_tokens - sum(previous_tokens.values()))
    for r in rows.values():
        r.previous_total_tokens = previous_tokens.get(r.name, 0)
    if rest.cost is not None:
        rest.cost = _cost(rest.cost) if abs(rest.cost) > 1e-9 else 0.0
    if rest.total_tokens > 0 or (rest.requests or 0) > 0 or (rest.cost or 0.0) > 0:
        rows[UNATTRIBUTED] = rest
    result = [r for r in rows.values() if r.total_tokens > 0 or (r.requests or 0) > 0 or (r.cost or 0.0) > 0]
    for r in result:
        r.cost = None if r.cost is None else _cost(r.cost)
        r.share = r.total_tokens / totals.total_tokens if totals.total_tokens else 0.0
    result.sort(key=lambda r: (-r.total_tokens, -(r.cost or 0.0), r.name))
    for rank, r in enumerate(result, 1):
        r.rank = rank
    return result


def _month_start(at: float) -> float:
    moment = datetime.fromtimestamp(at, timezone.utc)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def _quotas(prom: Prometheus, at: float) -> tuple[bool, list[QuotaRow]]:
    """Usage against the limits recorded by the quota rules (`otel-tokens rules`), for the principals
    that have a limit: an override, or the default once they have usage.

    Usage is computed here, exactly at `at`: users over the rolling 24 h, departments from the start
    of the calendar month (UTC). The rules' own month-to-date is built from hourly buckets and lags
    by up to an hour, which suits an alert, not a report read at a given time.
    """
    wanted = {series(p, k, what): (p, k, what) for p in PRINCIPALS for k in KINDS
              for what in ("limit_override", "limit_default")}
    matcher = '{__name__=~"' + "|".join(re.escape(n) for n in wanted) + '"}'
    overrides: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    defaults: dict[tuple[str, str], float] = {}
    for metric, value in prom.instant(matcher, at):
        principal, kind, what = wanted[metric.get("__name__", "")]
        if what == "limit_default":
            defaults[principal, kind] = value
        elif metric.get(PRINCIPALS[principal]):
            overrides[principal, kind][metric[PRINCIPALS[principal]]] = value
    if not overrides and not defaults:
        return False, []
    windows = {"user": (USER_QUOTA_WINDOW, USER_QUOTA_WINDOW),
               "department": ("month", promql_duration(max(0.001, at - _month_start(at))))}
    rows: list[QuotaRow] = []
    for principal, label in PRINCIPALS.items():
        for kind in KINDS:
            limits = overrides.get((principal, kind), {})
            default = defaults.get((principal, kind))
            if not limits and default is None:
                continue
            shown, window = windows[principal]
            usage = {metric.get(label, ""): value
                     for metric, value in prom.instant(usage_over(_COUNTER[kind], label, window), at)}
            who = set(limits) | ({n for n, v in usage.items() if v > 0} if default is not None else set())
            for name in who:
                limit = limits.get(name, default)
                if limit:
                    value = usage.get(name, 0.0)
                    rows.append(QuotaRow(principal, name, kind, shown,
                                         _int(value) if kind == "tokens" else _cost(value),
                                         _int(limit) if kind == "tokens" and limit == int(limit) else limit))
    rows.sort(key=lambda q: (q.principal != "user", KINDS.index(q.quota), -q.ratio, q.name))
    return True, rows


def build(prom: Prometheus, at: float, window_seconds: float, top: int, window_text: str | None = None) -> Report:
    have = prom.present((TOKENS, COST, REQUESTS))
    if TOKENS not in have:
        raise ReportError(f"Prometheus at {prom.url} has no {TOKENS} metric: no otel-tokens data has been scraped "
                          "(is the app instrumented and its metrics endpoint or collector scraped?)", DATA_ERROR)
    window = promql_duration(window_seconds)
    current, previous = _window_sums(prom, have, window, [at, at - window_seconds])
    totals, before = _totals(current), _totals(previous)
    if totals.total_tokens == 0 and not totals.requests:
        end = _utc(at)
        raise ReportError(f"no LLM traffic in the {window_text or human_duration(window_seconds)} ending {end} UTC "
                          f"({TOKENS} did not grow); try a longer --window or another --at", DATA_ERROR)
    rows, counts = {}, {}
    for kind in DIMENSIONS:
        all_rows = _rows(kind, current, previous, totals, before)
        rows[kind], counts[kind] = all_rows[:top], len(all_rows)
    has_rules, quotas = _quotas(prom, at)
    currency = None
    if len(totals.cost_by_currency) == 1:
        currency = next(iter(totals.cost_by_currency))
    elif totals.cost_by_currency:
        currency = "+".join(totals.cost_by_currency)
    report = Report(prom.url, at, window_seconds, top, currency, totals, before, rows, counts, quotas, has_rules,
                    window_text=window_text)
    report.notes = _notes(report, have)
    return report


def _notes(report: Report, have: set[str]) -> list[str]:
    notes = []
    if COST not in have:
        notes.append(f"no {COST}: no model was priced (see `otel-tokens doctor`)")
    if len(report.totals.cost_by_currency) > 1:
        notes.append("costs in several currencies (" + ", ".join(report.totals.cost_by_currency)
                     + ") are added without conversion; set one reporting currency in every app")
    if report.totals.estimated_tokens:
        notes.append(f"{_pct(report.totals.estimated_share)} of the tokens are estimated (no tokenizer): "
                     "map one with `tokenizers:` in the config")
    for kind, rows in report.rows.items():
        unattributed = next((r for r in rows if r.name == UNATTRIBUTED), None)
        if unattributed is not None and kind != "model":
            notes.append(f"{_pct(unattributed.share)} of the tokens carry no {DIMENSIONS[kind]} "
                         "(no usage_context or baggage)")
    if not report.quota_rules:
        notes.append("no quota rules loaded in this Prometheus (`otel-tokens rules`): quota section empty")
    elif any(q.principal == "department" for q in report.quotas):
        notes.append("department usage is month to date (UTC) at the report time; the budget alerts count "
                     "whole hours and lag by up to an hour")
    return notes


# --- timeline for --png -----------------------------------------------------------------------------
def buckets(window_seconds: float) -> tuple[int, float]:
    """(number, seconds) of equal buckets that tile the window exactly, whole milliseconds, >= 1 s."""
    total_ms = round(window_seconds * 1000)
    for n in range(min(MAX_BUCKETS, max(1, total_ms // 1000)), 0, -1):
        if total_ms % n == 0:
            return n, total_ms / n / 1000
    return 1, window_seconds  # pragma: no cover - n == 1 always divides


def token_timeline(prom: Prometheus, at: float, window_seconds: float, users: Sequence[str]
                   ) -> tuple[list[float], dict[str, list[int]]]:
    """Cumulative tokens since the window's start, per user, at the window's start and each bucket's
    end: exact bucket sums (`usage_over` over one bucket) from one `query_range`, so the last point
    equals the user's window total."""
    n, step = buckets(window_seconds)
    start = at - window_seconds
    times = [start + step * i for i in range(n + 1)]
    per_bucket: dict[str, list[float]] = {u: [0.0] * n for u in users}
    wanted = set(users)
    expr = usage_over(TOKENS, USER, promql_duration(step))
    for metric, values in prom.range(expr, start + step, at, step):
        name = metric.get(USER, "")
        if name not in wanted:
            continue
        for t, v in values:
            i = round((t - start) / step) - 1
            if 0 <= i < n:
                per_bucket[name][i] += v
    cumulative = {}
    for user, values in per_bucket.items():
        running, line = 0.0, [0]
        for v in values:
            running += v
            line.append(_int(running))
        cumulative[user] = line
    return times, cumulative


def draw_png(path: str, report: Report, prom: Prometheus) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError("--png needs matplotlib: pip install 'otel-tokens[report]'", USAGE_ERROR) from None
    users = [r.name for r in report.rows["user"] if r.name != UNATTRIBUTED]
    times, lines = token_timeline(prom, report.at, report.window_seconds, users)
    moments = [datetime.fromtimestamp(t, timezone.utc) for t in times]
    figure = Figure(figsize=(13, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, width_ratios=[3, 2])
    for user in users:
        left.plot(moments, lines[user], marker="o" if len(moments) <= 30 else None, markersize=3, label=user)
    left.set_title(f"Tokens over the last {report.window} by top users (cumulative)")
    left.set_xlabel("time (UTC)")
    left.set_ylabel("tokens")
    left.yaxis.set_major_formatter(_thousands())
    if users:
        left.legend(loc="upper left", fontsize="small")
    for tick in left.get_xticklabels():
        tick.set_rotation(30)
        tick.set_horizontalalignment("right")
    departments = list(reversed(report.rows["department"]))
    if report.totals.cost is not None:
        values = [r.cost or 0.0 for r in departments]
        right.set_title(f"Cost by department ({report.currency}), last {report.window}")
        right.set_xlabel(report.currency or "cost")
    else:
        values = [float(r.total_tokens) for r in departments]
        right.set_title(f"Tokens by department, last {report.window} (no cost recorded)")
        right.set_xlabel("tokens")
    bars = right.barh([r.name for r in departments], values, color="tab:blue")
    priced = report.totals.cost is not None
    right.bar_label(bars, labels=[format_money(v) if priced else f"{_int(v):,}" for v in values], padding=3,
                    fontsize="small")
    right.margins(x=0.25)
    figure.suptitle(headline(report), fontsize="medium", wrap=True)
    try:
        figure.savefig(path, format="png")
    except OSError as error:
        raise ReportError(f"cannot write {path}: {error.strerror or error}", DATA_ERROR) from None


def _thousands() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _pos: f"{value:,.0f}")


# --- formatting -------------------------------------------------------------------------------------
def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _tokens(n: int | float | None) -> str:
    return "—" if n is None else f"{_int(n):,}"


def format_money(value: float | None) -> str:
    """2 decimals from 1 up, else 4 significant digits (virtual prices of local models are small)."""
    if value is None:
        return "—"
    if value == 0 or abs(value) >= 1:
        return f"{value:,.2f}"
    decimals = min(10, 3 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}".rstrip("0")
    return text + "0" * max(0, 2 - len(text.split(".")[1]))


def _pct(fraction: float | None) -> str:
    return "—" if fraction is None else f"{100 * fraction:.1f} %"


def _signed_pct(fraction: float | None, current: float | None = None) -> str:
    if fraction is None:
        return "new" if current else "—"
    return f"{100 * fraction:+.1f} %"


def headline(report: Report) -> str:
    t, p = report.totals, report.previous
    window = report.window
    text = f"{window} ending {_utc(report.at)} UTC: {t.total_tokens:,} tokens"
    if p.total_tokens:
        text += f" ({_signed_pct(_change(t.total_tokens, p.total_tokens))} on the previous {window})"
    else:
        text += f" (none in the previous {window})"
    if t.cost is not None:
        text += f", {report.currency} {format_money(t.cost)}"
    if t.requests is not None:
        text += f", {t.requests:,} requests ({t.errors:,} error{'' if t.errors == 1 else 's'})"
    leaders = []
    for kind, word in (("department", "mostly department"), ("user", "top user")):
        rows = report.rows[kind]
        if rows:
            leaders.append(f"{word} {rows[0].name} ({_pct(rows[0].share)})")
    return text + ("; " + ", ".join(leaders) if leaders else "") + "."


_TOTAL_LINES = ("input tokens", "output tokens", "total tokens", "cost", "requests", "errors", "estimated tokens")


def _total_values(report: Report) -> list[tuple[str, str, str, str]]:
    t, p = report.totals, report.previous
    cost = f"cost ({report.currency})" if report.currency else "cost"
    return [
        ("input tokens", _tokens(t.input_tokens), _tokens(p.input_tokens),
         _signed_pct(_change(t.input_tokens, p.input_tokens), t.input_tokens)),
        ("output tokens", _tokens(t.output_tokens), _tokens(p.output_tokens),
         _signed_pct(_change(t.output_tokens, p.output_tokens), t.output_tokens)),
        ("total tokens", _tokens(t.total_tokens), _tokens(p.total_tokens),
         _signed_pct(_change(t.total_tokens, p.total_tokens), t.total_tokens)),
        (cost, format_money(t.cost), format_money(p.cost), _signed_pct(_change(t.cost, p.cost), t.cost)),
        ("requests", _tokens(t.requests), _tokens(p.requests), _signed_pct(_change(t.requests, p.requests),
                                                                           t.requests)),
        ("errors", _tokens(t.errors), _tokens(p.errors), _signed_pct(_change(t.errors, p.errors), t.errors)),
        ("estimated tokens", f"{t.estimated_tokens:,} ({_pct(t.estimated_share)})",
         f"{p.estimated_tokens:,} ({_pct(p.estimated_share)})", ""),
    ]


_KIND_TITLE = {"user": "users", "department": "departments", "model": "models"}
_ROW_HEADER = ("#", "{kind}", "input", "output", "total", "share", "cost{currency}", "requests", "vs previous")


def _row_values(row: Row) -> tuple[str, ...]:
    return (str(row.rank), row.name, _tokens(row.input_tokens), _tokens(row.output_tokens),
            _tokens(row.total_tokens), _pct(row.share), format_money(row.cost), _tokens(row.requests),
            _signed_pct(row.change, row.total_tokens))


def _row_header(kind: str, currency: str | None) -> tuple[str, ...]:
    return tuple(h.format(kind=kind, currency=f" ({currency})" if currency else "") for h in _ROW_HEADER)


def _quota_values(q: QuotaRow, currency: str | None) -> tuple[str, ...]:
    fmt = _tokens if q.quota == "tokens" else format_money
    quota = "tokens" if q.quota == "tokens" else f"cost ({currency})" if currency else "cost"
    return (q.name, quota, "rolling 24 h" if q.window == USER_QUOTA_WINDOW else "month to date (UTC)",
            fmt(q.usage), fmt(q.limit), f"{q.percent:.1f} %")


_QUOTA_HEADER = ("{principal}", "quota", "window", "usage", "limit", "used")


def _kind_rows_title(report: Report, kind: str) -> str:
    shown, count = len(report.rows[kind]), report.counts[kind]
    return f"Top {_KIND_TITLE[kind]} by tokens" + (f" ({shown} of {count})" if count > shown else "")


def to_markdown(report: Report) -> str:
    def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> list[str]:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        return lines

    out = ["# LLM usage report", "", headline(report), "",
           f"Window: {_utc(report.start)} → {_utc(report.at)} UTC ({report.window}); previous window: "
           f"{_utc(report.start - report.window_seconds)} → {_utc(report.start)} UTC. Source: {report.prometheus}.",
           "", "## Totals", ""]
    out += table(("", "this window", "previous", "change"), _total_values(report), "lrrr")
    for kind in DIMENSIONS:
        out += ["", f"## {_kind_rows_title(report, kind)}", ""]
        out += table(_row_header(kind, report.currency), map(_row_values, report.rows[kind]), "rlrrrrrrr")
    out += ["", "## Quotas", ""]
    if not report.quotas:
        out.append("No principal has a recorded limit." if report.quota_rules else "No quota rules loaded.")
    for principal in PRINCIPALS:
        rows = [q for q in report.quotas if q.principal == principal]
        if rows:
            out += [f"### {principal.capitalize()}s", ""]
            out += table([h.format(principal=principal) for h in _QUOTA_HEADER],
                         (_quota_values(q, report.currency) for q in rows), "lllrrr")
            out.append("")
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    return "\n".join(out).rstrip() + "\n"


def _row_dict(row: Row) -> dict[str, Any]:
    return {"rank": row.rank, "name": row.name, "input_tokens": row.input_tokens,
            "output_tokens": row.output_tokens, "total_tokens": row.total_tokens, "cost": row.cost,
            "share": row.share, "requests": row.requests, "previous_total_tokens": row.previous_total_tokens,
            "change": row.change}


def _totals_dict(t: Totals) -> dict[str, Any]:
    return {"input_tokens": t.input_tokens, "output_tokens": t.output_tokens, "total_tokens": t.total_tokens,
            "cost": t.cost, "cost_by_currency": t.cost_by_currency, "requests": t.requests, "errors": t.errors,
            "estimated_tokens": t.estimated_tokens, "estimated_share": t.estimated_share}


def _window_dict(start: float, end: float) -> dict[str, Any]:
    return {"start": _iso(start), "end": _iso(end), "start_unix": start, "end_unix": end}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def to_dict(report: Report) -> dict[str, Any]:
    t, p = report.totals, report.previous
    return {
        "prometheus": report.prometheus,
        "window": {"duration": report.window, "seconds": report.window_seconds,
                   **_window_dict(report.start, report.at)},
        "previous_window": _window_dict(report.start - report.window_seconds, report.start),
        "currency": report.currency,
        "headline": headline(report),
        "totals": {**_totals_dict(t), "previous": _totals_dict(p),
                   "change": {k: _change(getattr(t, k), getattr(p, k))
                              for k in ("input_tokens", "output_tokens", "total_tokens", "cost", "requests",
                                        "errors")}},
        "top": report.top,
        **{_KIND_TITLE[kind]: [_row_dict(r) for r in report.rows[kind]] for kind in DIMENSIONS},
        "counts": {_KIND_TITLE[kind]: report.counts[kind] for kind in DIMENSIONS},
        "quota_rules": report.quota_rules,
        "quotas": [{"principal": q.principal, "name": q.name, "quota": q.quota, "window": q.window,
                    "usage": q.usage, "limit": q.limit, "ratio": q.ratio, "percent": q.percent}
                   for q in report.quotas],
        "notes": report.notes,
    }


def to_json(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, ensure_ascii=False) + "\n"


CSV_COLUMNS = ("kind", "name", "input_tokens", "output_tokens", "total_tokens", "cost", "share", "currency", "rank",
               "requests", "errors", "previous_total_tokens", "change", "quota", "window", "usage", "limit",
               "percent")


def to_csv(report: Report) -> str:
    """One row per entity: the totals (kind `total`), the top users, departments and models, then one
    row per quota (kind `user_quota` / `department_quota`). Numbers are plain, empty when unknown."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()

    def plain(value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, float) and math.isfinite(value):
            return format(Decimal(repr(value)), "f")  # 0.00004, not 4e-05
        return value

    t = report.totals
    writer.writerow({k: plain(v) for k, v in {
        "kind": "total", "name": "all", "input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
        "total_tokens": t.total_tokens, "cost": t.cost, "share": 1.0 if t.total_tokens else 0.0,
        "currency": report.currency, "requests": t.requests, "errors": t.errors,
        "previous_total_tokens": report.previous.total_tokens,
        "change": _change(t.total_tokens, report.previous.total_tokens), "window": report.window}.items()})
    for kind in DIMENSIONS:
        for r in report.rows[kind]:
            data = _row_dict(r)
            writer.writerow({k: plain(v) for k, v in {**data, "kind": kind, "currency": report.currency,
                                                      "window": report.window}.items()})
    for q in report.quotas:
        writer.writerow({k: plain(v) for k, v in {
            "kind": f"{q.principal}_quota", "name": q.name, "quota": q.quota, "window": q.window,
            "usage": q.usage, "limit": q.limit, "percent": q.percent,
            "currency": report.currency if q.quota == "cost" else None}.items()})
    return buffer.getvalue()


def print_table(report: Report, file: TextIO) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    terminal = hasattr(file, "isatty") and file.isatty()
    console = Console(file=file, width=None if terminal else 120, highlight=False, soft_wrap=False)
    console.print(f"[bold]LLM usage[/bold] — {headline(report)}")
    console.print(f"[dim]{_utc(report.start)} → {_utc(report.at)} UTC, previous "
                  f"{_utc(report.start - report.window_seconds)} → {_utc(report.start)}; {report.prometheus}[/dim]")

    totals = Table(box=box.SIMPLE_HEAD, title="Totals", title_justify="left", pad_edge=False)
    for name, justify in (("", "left"), ("this window", "right"), ("previous", "right"), ("change", "right")):
        totals.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for values in _total_values(report):
        totals.add_row(*values)
    console.print(totals)

    for kind in DIMENSIONS:
        table = Table(box=box.SIMPLE_HEAD, title=_kind_rows_title(report, kind), title_justify="left",
                      pad_edge=False)
        for i, header in enumerate(_row_header(kind, report.currency)):
            table.add_column(header, justify="left" if i == 1 else "right", no_wrap=True,
                             overflow="fold" if i == 1 else "ellipsis", max_width=40 if i == 1 else None)
        for row in report.rows[kind]:
            table.add_row(*_row_values(row), style="dim" if row.name == UNATTRIBUTED else None)
        console.print(table)

    if report.quotas:
        quotas = Table(box=box.SIMPLE_HEAD, title="Quotas", title_justify="left", pad_edge=False)
        for i, header in enumerate(("principal", *_QUOTA_HEADER[1:])):
            quotas.add_column(header, justify="left" if i < 3 else "right", no_wrap=True)
        for q in report.quotas:
            values = _quota_values(q, report.currency)
            style = "bold red" if q.ratio >= 1 else "yellow" if q.ratio >= 0.8 else None
            quotas.add_row(f"{q.principal} {values[0]}", *values[1:], style=style)
        console.print(quotas)
    else:
        console.print("Quotas: " + ("no principal has a recorded limit." if report.quota_rules
                                    else "no quota rules loaded."))
    for note in report.notes:
        console.print(f"[dim]note: {note}[/dim]")


# --- command ----------------------------------------------------------------------------------------
def _options(args: argparse.Namespace) -> tuple[Prometheus, float, float, int, str]:
    fmt = (args.format or "table").lower()
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {args.format!r}: choose one of {', '.join(FORMATS)}", USAGE_ERROR)
    if not args.prometheus:
        raise ReportError("--prometheus URL is required (e.g. --prometheus http://localhost:9090)", USAGE_ERROR)
    window = parse_window(args.window)
    try:
        top = int(args.top)
    except (TypeError, ValueError):
        top = 0
    if top < 1:
        raise ReportError(f"bad --top {args.top!r}: use a whole number from 1", USAGE_ERROR)
    if args.at is None:
        at = time.time()
    else:
        try:
            at = float(args.at)
        except ValueError:
            at = math.nan
        if not math.isfinite(at) or at <= 0:
            raise ReportError(f"bad --at {args.at!r}: use a unix time in seconds", USAGE_ERROR)
    return Prometheus(args.prometheus), at, window, top, fmt


def run(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """The `report` subcommand: print the digest; errors are one line on stderr and an exit status."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        prom, at, window, top, fmt = _options(args)
        report = build(prom, at, window, top, args.window.strip())
        if args.png:
            draw_png(args.png, report, prom)
        if fmt == "json":
            stdout.write(to_json(report))
        elif fmt == "csv":
            stdout.write(to_csv(report))
        elif fmt == "markdown":
            stdout.write(to_markdown(report))
        else:
            try:
                import rich  # noqa: F401
            except ImportError:
                print(f"{PROG}: the table needs rich (pip install 'otel-tokens[report]'); printing markdown",
                      file=stderr)
                stdout.write(to_markdown(report))
            else:
                print_table(report, stdout)
        if args.png:
            print(f"wrote {args.png}", file=stderr)
    except ReportError as error:
        print(f"{PROG}: {error}", file=stderr)
        return error.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=stderr)
        return 130
    except Exception as error:  # never a traceback for a reporting tool; say what broke in one line
        print(f"{PROG}: internal error: {type(error).__name__}: {error}", file=stderr)
        return DATA_ERROR
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prometheus", metavar="URL", help="Prometheus base URL, e.g. http://localhost:9090")
    parser.add_argument("--window", default="24h", help="Prometheus duration to report on (default 24h); the "
                        "previous window of the same length is the comparison")
    parser.add_argument("--top", default="5", metavar="N", help="users, departments and models to list (default 5)")
    parser.add_argument("--format", default="table", metavar="FORMAT",
                        help=f"{' | '.join(FORMATS)} (default table)")
    parser.add_argument("--png", metavar="FILE", help="also draw tokens by top user and cost by department")
    parser.add_argument("--at", metavar="UNIX_TIME", help="end of the window (default now)")


def one_line_error(message: str) -> None:
    """argparse's error(), as one line (argparse prints usage and the message on two)."""
    print(f"{PROG}: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


__all__ = ["FORMATS", "Report", "ReportError", "build", "parse_window", "run", "to_csv", "to_json",
           "to_markdown", "token_timeline", "usage_by"]
