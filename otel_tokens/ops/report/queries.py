"""The report's queries: window sums, rows, quota use and the --png timeline, all from Prometheus."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from otel_tokens import names
from otel_tokens.ops.durations import human_duration, promql_duration
from otel_tokens.ops.report.model import (
    COST,
    CURRENCY,
    DATA_ERROR,
    DIMENSIONS,
    ERROR,
    MAX_BUCKETS,
    OPERATION,
    REQUESTS,
    SOURCE,
    TOKEN_TYPE,
    TOKENS,
    UNATTRIBUTED,
    USER,
    Report,
    ReportError,
    Row,
    Totals,
    _cost,
    _int,
    _pct,
    local_time,
    usage_by,
)
from otel_tokens.ops.report.quota_table import quota_rows
from otel_tokens.ops.rollups import usage_over
from otel_tokens.prometheus_api import Prometheus
from otel_tokens.quota import vocabulary


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


def _window_sums(prom: Prometheus, have: set[str], windows: Sequence[tuple[str, float]]) -> list[Sums]:
    """For each (window, end), every query's exact window sums keyed by its label values."""
    queries = _queries(have)
    jobs = [(i, key, counter, labels) for i in range(len(windows)) for key, (counter, labels) in queries.items()]

    def run(job: tuple[int, str, str, tuple[str, ...]]) -> dict[tuple[str, ...], float]:
        i, _, counter, labels = job
        window, end = windows[i]
        return {tuple(metric.get(label, "") for label in labels): value
                for metric, value in prom.instant(usage_by(counter, labels, window), end)}

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, jobs))
    out: list[Sums] = [{} for _ in windows]
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

    # Series with no value for the dimension (an older version, another producer) join the calls the
    # recorder charged to __unattributed__: one row for everything nobody claimed.
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
        claimed = rows.get(UNATTRIBUTED)
        if claimed is not None:
            rest.input_tokens += claimed.input_tokens
            rest.output_tokens += claimed.output_tokens
            rest.previous_total_tokens += claimed.previous_total_tokens
            if rest.cost is not None:
                rest.cost += claimed.cost or 0.0
            if rest.requests is not None:
                rest.requests += claimed.requests or 0
        rows[UNATTRIBUTED] = rest
    result = [r for r in rows.values() if r.total_tokens > 0 or (r.requests or 0) > 0 or (r.cost or 0.0) > 0]
    for r in result:
        r.cost = None if r.cost is None else _cost(r.cost)
        r.share = r.total_tokens / totals.total_tokens if totals.total_tokens else 0.0
    result.sort(key=lambda r: (-r.total_tokens, -(r.cost or 0.0), r.name))
    for rank, r in enumerate(result, 1):
        r.rank = rank
    return result


def build(prom: Prometheus, at: float, window_seconds: float, top: int, window_text: str | None = None,
          zone: str = "UTC", previous: tuple[float, float] | None = None, quotas_at: float | None = None) -> Report:
    """The digest over the window ending at `at`, compared with `previous` (its end and length; default the
    window of the same length before this one); the quotas as they stand at `quotas_at` (default `at`: a digest
    of yesterday shows where everyone stands now)."""
    have = prom.present((TOKENS, COST, REQUESTS))
    if TOKENS not in have:
        raise ReportError(f"Prometheus at {prom.url} has no {TOKENS} metric: no otel-tokens data has been scraped "
                          "(is the app instrumented and its metrics endpoint or collector scraped?)", DATA_ERROR)
    previous_at, previous_seconds = previous or (at - window_seconds, window_seconds)
    current, before_sums = _window_sums(prom, have, [(promql_duration(window_seconds), at),
                                                     (promql_duration(previous_seconds), previous_at)])
    totals, before = _totals(current), _totals(before_sums)
    if totals.total_tokens == 0 and not totals.requests:
        raise ReportError(f"no LLM traffic in the {window_text or human_duration(window_seconds)} ending "
                          f"{local_time(at, zone)} ({TOKENS} did not grow); try a longer --window or another --at",
                          DATA_ERROR)
    rows, counts, top_app = {}, {}, None
    for kind in DIMENSIONS:
        all_rows = _rows(kind, current, before_sums, totals, before)
        rows[kind], counts[kind] = all_rows[:top], len(all_rows)
        if kind == "app":
            top_app = leading_app(all_rows, totals)
    has_rules, quotas = quota_rows(prom, at if quotas_at is None else quotas_at, zone)
    currency = None
    if len(totals.cost_by_currency) == 1:
        currency = next(iter(totals.cost_by_currency))
    elif totals.cost_by_currency:
        currency = "+".join(totals.cost_by_currency)
    report = Report(prom.url, at, window_seconds, top, currency, totals, before, rows, counts, quotas, has_rules,
                    window_text=window_text, zone=zone, previous_at=previous_at, previous_seconds=previous_seconds,
                    quotas_at=quotas_at, top_app=top_app)
    report.notes = _notes(report, have)
    return report


def leading_app(rows: Sequence[Row], totals: Totals) -> Row | None:
    """The app that spent most: by cost where anything was priced (what a digest's reader pays), else by
    tokens. Pre-upgrade series with no app are one row like any other, so the leader never hides them."""
    if not rows:
        return None
    if totals.cost:
        return min(rows, key=lambda r: (-(r.cost or 0.0), -r.total_tokens, r.name))
    return min(rows, key=lambda r: (-r.total_tokens, r.name))


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
        if unattributed is not None and kind == "app":
            notes.append(f"{_pct(unattributed.share)} of the tokens carry no {DIMENSIONS[kind]} (written before "
                         "otel-tokens recorded the app, or by a Recorder built without Settings.app)")
        elif unattributed is not None and kind != "model":
            notes.append(f"{_pct(unattributed.share)} of the tokens carry no {DIMENSIONS[kind]} "
                         "(no usage_context, trusted header or trusted baggage)")
    if not report.quota_rules:
        notes.append("no quota rules loaded in this Prometheus (`otel-tokens rules`): quota section empty")
    elif any(q.window != "24h" for q in report.quotas):
        notes.append(f"calendar windows are to date at the report time, from local midnight ({report.zone}); the "
                     "budget alerts count whole hours and lag by up to an hour")
    for q in report.quotas:
        if q.runs_out_at is not None:
            what = "token budget" if q.quota == vocabulary.TOKENS else "cost budget"
            period = "monthly" if q.window == "month" else "yearly"
            notes.append(f"{q.principal} {q.name} runs out of its {period} {what} on "
                         f"{local_time(q.runs_out_at, report.zone)[:10]} at the current rate")
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


