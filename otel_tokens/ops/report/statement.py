"""A statement: exact usage and cost of a closed period (a calendar month, or --from/--to), every row.

Unlike the digest (`queries.build`: a trailing window, top rows, a comparison), a statement is for
chargeback: totals per department, app, user and model that add up to the cent, from each series' exact
growth (`exact.growth`), and one line per day x app x user x department x model x token type for exports
(FOCUS). The app (service.name) has its own rows and is a line key rather than a column of the other rows
tables (a user x app matrix would be unreadable): a line splits by app only where a user really called from
two apps that day. A period Prometheus no longer fully holds is refused rather than summed short.
"""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from otel_tokens import names
from otel_tokens.ops.report import exact
from otel_tokens.ops.report.model import (
    APP,
    COST,
    CURRENCY,
    DATA_ERROR,
    DEPARTMENT,
    DIMENSIONS,
    ERROR,
    MODEL,
    REQUESTS,
    SOURCE,
    TOKEN_TYPE,
    TOKENS,
    UNATTRIBUTED,
    USER,
    ReportError,
    Row,
    Totals,
    _cost,
    _int,
    _utc,
)
from otel_tokens.ops.report.period import Period
from otel_tokens.prometheus_api import Prometheus

PROVIDER = names.prometheus_label(names.GEN_AI_PROVIDER_NAME)
_TYPES = (names.TOKEN_TYPE_INPUT, names.TOKEN_TYPE_OUTPUT)


@dataclass
class Line:
    """One day's usage of one user, department, app, model and token type: the export's grain."""

    day: float  # start of the local day in the period's zone (or of the period, on its first day)
    day_end: float
    user: str
    department: str
    model: str
    provider: str
    token_type: str
    tokens: int = 0
    estimated_tokens: int = 0
    cost: dict[str, float] = field(default_factory=dict)  # currency -> cost
    app: str = UNATTRIBUTED  # service.name; series from before the package recorded it have none


@dataclass
class Statement:
    prometheus: str
    period: Period
    end: float  # the period's end, or now while it runs
    complete: bool
    held_from: float | None  # Prometheus's oldest sample; None: the server does not say
    currency: str | None
    totals: Totals
    rows: dict[str, list[Row]]  # kind -> every row
    lines: list[Line]
    notes: list[str]
    generated_at: float

    @property
    def status(self) -> str:
        if self.complete:
            return "complete"
        return f"in progress: to {_utc(self.end)} UTC, the period ends {_utc(self.period.end)} UTC"


def _name(labels: dict[str, str], label: str) -> str:
    return labels.get(label) or UNATTRIBUTED


def _check_held(prom: Prometheus, period: Period) -> tuple[float | None, list[str]]:
    oldest = prom.oldest_sample()
    if oldest is None:
        return None, [f"{prom.url} does not publish the age of its oldest sample: check that its retention covers "
                      f"{_utc(period.start)} UTC, or a statement of a period it no longer holds is short"]
    if oldest > period.start:
        raise ReportError(f"Prometheus at {prom.url} holds samples only from {_utc(oldest)} UTC (retention, or it "
                          f"started then): the period from {_utc(period.start)} UTC is no longer fully held and "
                          "its total would be short; report a period from then on (--from), or keep more "
                          "(--storage.tsdb.retention.time)", DATA_ERROR)
    return oldest, []


def build_statement(prom: Prometheus, period: Period, now: float | None = None) -> Statement:
    now = time.time() if now is None else now
    if period.start >= now:
        raise ReportError(f"the period {period.label} starts at {_utc(period.start)} UTC, in the future", DATA_ERROR)
    have = prom.present((TOKENS, COST, REQUESTS))
    if TOKENS not in have:
        raise ReportError(f"Prometheus at {prom.url} has no {TOKENS} metric: no otel-tokens data has been scraped",
                          DATA_ERROR)
    held_from, notes = _check_held(prom, period)
    end = min(period.end, now)
    counters = [c for c in (TOKENS, COST, REQUESTS) if c in have]
    with ThreadPoolExecutor(max_workers=3) as pool:
        cuts = period.midnights(end)  # a statement's days are local days
        grown = dict(zip(counters, pool.map(lambda c: exact.growth(prom, c, period.start, end, cuts), counters),
                         strict=True))

    lines: dict[tuple[float, str, str, str, str, str, str], Line] = {}
    day_of: dict[float, tuple[float, float]] = {}

    def line(t: float, labels: dict[str, str]) -> Line | None:
        token_type = labels.get(TOKEN_TYPE, "")
        if token_type not in _TYPES:
            return None
        day, day_end = local_day(t)
        key = (day, _name(labels, USER), _name(labels, DEPARTMENT), _name(labels, MODEL),
               labels.get(PROVIDER, ""), token_type, _name(labels, APP))
        if key not in lines:
            lines[key] = Line(day, min(end, day_end), key[1], key[2], key[3], key[4], key[5], app=key[6])
        return lines[key]

    def local_day(t: float) -> tuple[float, float]:
        """The local day of a chunk start (cached: every series has the same chunks)."""
        found = day_of.get(t)
        if found is None:
            found = day_of[t] = period.day(t)
        return found

    def day_start(t: float) -> float:
        return local_day(t)[0]

    for key, added in grown.get(TOKENS, {}).items():
        labels = dict(key)
        for t, value in exact.days(added, day_start):
            target = line(t, labels)
            if target is not None:
                target.tokens += _int(value)
                if labels.get(SOURCE) == names.SOURCE_ESTIMATED:
                    target.estimated_tokens += _int(value)
    for key, added in grown.get(COST, {}).items():
        labels = dict(key)
        currency = labels.get(CURRENCY) or "?"
        for t, value in exact.days(added, day_start):
            target = line(t, labels)
            if target is not None:
                target.cost[currency] = target.cost.get(currency, 0.0) + value
    ordered = sorted(lines.values(), key=lambda x: (x.day, x.department, x.app, x.user, x.model, x.provider,
                                                    x.token_type))
    for x in ordered:
        x.cost = {c: _cost(v) for c, v in sorted(x.cost.items())}
    requests = _requests(grown.get(REQUESTS))
    totals, rows = _summaries(ordered, requests, REQUESTS in have)
    currency = "+".join(totals.cost_by_currency) or None
    if len(totals.cost_by_currency) > 1:
        notes.append("costs in several currencies (" + ", ".join(totals.cost_by_currency) + ") are added without "
                     "conversion; set one reporting currency in every app")
    if totals.estimated_tokens:
        notes.append(f"{totals.estimated_tokens:,} of the tokens are estimated (no tokenizer)")
    if COST not in have:
        notes.append(f"no {COST}: no model was priced")
    return Statement(prom.url, period, end, end >= period.end, held_from, currency, totals, rows, ordered, notes,
                     now)


Requests = dict[tuple[str, str, str, str], tuple[int, int]]  # (user, department, model, app) -> (requests, errors)


def _requests(grown: dict[exact.SeriesKey, dict[float, float]] | None) -> Requests | None:
    if grown is None:
        return None
    out: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for key, added in grown.items():
        labels = dict(key)
        n = _int(sum(added.values()))
        entry = out[_name(labels, USER), _name(labels, DEPARTMENT), _name(labels, MODEL), _name(labels, APP)]
        entry[0] += n
        if labels.get(ERROR):
            entry[1] += n
    return {k: (v[0], v[1]) for k, v in out.items()}


def _summaries(lines: list[Line], requests: Requests | None, has_requests: bool) -> tuple[Totals, dict[str, list[Row]]]:
    totals = Totals(requests=0 if has_requests else None, errors=0 if has_requests else None)
    by_currency: dict[str, float] = defaultdict(float)
    rows: dict[str, dict[str, Row]] = {kind: {} for kind in DIMENSIONS}
    index = {"user": 0, "department": 1, "model": 2, "app": 3}

    def row(kind: str, name: str) -> Row:
        found = rows[kind].get(name)
        if found is None:
            found = rows[kind][name] = Row(kind, name, cost=None, requests=0 if has_requests else None)
        return found

    for x in lines:
        is_input = x.token_type == names.TOKEN_TYPE_INPUT
        if is_input:
            totals.input_tokens += x.tokens
        else:
            totals.output_tokens += x.tokens
        totals.estimated_tokens += x.estimated_tokens
        for currency, value in x.cost.items():
            by_currency[currency] += value
        for kind, name in (("user", x.user), ("department", x.department), ("app", x.app), ("model", x.model)):
            r = row(kind, name)
            if is_input:
                r.input_tokens += x.tokens
            else:
                r.output_tokens += x.tokens
            if x.cost:
                r.cost = (r.cost or 0.0) + sum(x.cost.values())
    for key, (n, errors) in (requests or {}).items():
        assert totals.requests is not None and totals.errors is not None
        totals.requests += n
        totals.errors += errors
        for kind, i in index.items():
            r = row(kind, key[i])
            r.requests = (r.requests or 0) + n
    if by_currency:
        totals.cost_by_currency = {c: _cost(v) for c, v in sorted(by_currency.items())}
        totals.cost = _cost(sum(by_currency.values()))
    out: dict[str, list[Row]] = {}
    for kind, found in rows.items():
        result = sorted(found.values(), key=lambda r: (-r.total_tokens, -(r.cost or 0.0), r.name))
        for rank, r in enumerate(result, 1):
            r.rank = rank
            r.cost = None if r.cost is None else _cost(r.cost)
            r.share = r.total_tokens / totals.total_tokens if totals.total_tokens else 0.0
        out[kind] = result
    return totals, out
