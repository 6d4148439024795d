"""The report as text: table (rich), markdown, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, TextIO

from otel_tokens.ops.report.model import (
    DIMENSIONS,
    UNATTRIBUTED,
    QuotaRow,
    Report,
    Row,
    Totals,
    _change,
    _int,
    _pct,
    local_time,
)
from otel_tokens.quota import vocabulary

# --- formatting -------------------------------------------------------------------------------------


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




def _signed_pct(fraction: float | None, current: float | None = None) -> str:
    if fraction is None:
        return "new" if current else "—"
    return f"{100 * fraction:+.1f} %"


def _window_title(report: Report) -> tuple[str, str]:
    """What the headline calls the window and its comparison: ("24h ending ... UTC", "the previous 24h"),
    ("yesterday (2026-12-06, Asia/Shanghai)", "the day before")."""
    if report.window_text == "yesterday":
        return f"yesterday ({local_time(report.start, report.zone)[:10]}, {report.zone})", "the day before"
    if report.window_text == "today":
        return (f"today ({local_time(report.start, report.zone)[:10]}, {report.zone}) to "
                f"{local_time(report.at, report.zone, seconds=False)[11:]}", "the same hours yesterday")
    return f"{report.window} ending {local_time(report.at, report.zone)}", f"the previous {report.window}"


def headline(report: Report) -> str:
    t, p = report.totals, report.previous
    window, previous = _window_title(report)
    text = f"{window}: {t.total_tokens:,} tokens"
    if p.total_tokens:
        text += f" ({_signed_pct(_change(t.total_tokens, p.total_tokens))} on {previous})"
    else:
        text += f" (none in {previous})"
    if t.cost is not None:
        text += f", {report.currency} {format_money(t.cost)}"
    if t.requests is not None:
        text += f", {t.requests:,} requests ({t.errors:,} error{'' if t.errors == 1 else 's'})"
    leaders = []
    for kind, word in (("department", "mostly department"), ("user", "top user")):
        rows = report.rows.get(kind)
        if rows:
            leaders.append(f"{word} {rows[0].name} ({_pct(rows[0].share)})")
    app = report.top_app
    if app is not None:  # by cost, as the seeds' digest says which scenario the money went to
        priced = bool(t.cost)
        share = (app.cost or 0.0) / t.cost if t.cost else app.share
        leaders.append(f"mostly from app {app.name} ({_pct(share)} of the {'cost' if priced else 'tokens'})")
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


_KIND_TITLE = {"user": "users", "department": "departments", "app": "apps", "model": "models"}
_ROW_HEADER = ("#", "{kind}", "input", "output", "total", "share", "cost{currency}", "requests", "vs previous")


def _row_values(row: Row) -> tuple[str, ...]:
    return (str(row.rank), row.name, _tokens(row.input_tokens), _tokens(row.output_tokens),
            _tokens(row.total_tokens), _pct(row.share), format_money(row.cost), _tokens(row.requests),
            _signed_pct(row.change, row.total_tokens))


def _row_header(kind: str, currency: str | None) -> tuple[str, ...]:
    return tuple(h.format(kind=kind, currency=f" ({currency})" if currency else "") for h in _ROW_HEADER)


WINDOW_NAMES = {"24h": "rolling 24 h", "day": "today", "week": "this week", "month": "this month",
                "year": "this year"}


def _quota_values(q: QuotaRow, currency: str | None, zone: str) -> tuple[str, ...]:
    fmt = _tokens if q.quota == "tokens" else format_money
    quota = "tokens" if q.quota == "tokens" else f"cost ({currency})" if currency else "cost"
    resets = "—" if q.resets_at is None else local_time(q.resets_at, zone, seconds=False)
    limit = fmt(q.limit) + (f" (+{fmt(q.granted)} granted)" if q.granted else "")
    return (q.name, quota, WINDOW_NAMES.get(q.window, q.window), fmt(q.usage), limit, f"{q.percent:.1f} %",
            resets, _projection(q, zone))


def _projection(q: QuotaRow, zone: str) -> str:
    """Where the current burn rate leads by the window's end: the day the limit is reached, or the use."""
    if q.runs_out_at is not None:
        return f"runs out {local_time(q.runs_out_at, zone)[:10]}"
    return "" if q.end_ratio is None else f"{100 * q.end_ratio:.1f} %"


_QUOTA_HEADER = ("{principal}", "quota", "window", "usage", "limit", "used", "resets", "at end")


def kind_rows(report: Report, kind: str) -> list[Row]:
    """A dimension's top rows; none for a dimension the report was built without (a hand-made Report)."""
    return report.rows.get(kind, [])


def _kind_rows_title(report: Report, kind: str) -> str:
    shown, count = len(kind_rows(report, kind)), report.counts.get(kind, 0)
    return f"Top {_KIND_TITLE[kind]} by tokens" + (f" ({shown} of {count})" if count > shown else "")


def _md(text: str) -> str:
    """A name as markdown text: a table cell or a line stays one (pipes, newlines, markup escaped)."""
    text = text.replace("\\", "\\\\").replace("\r", " ").replace("\n", " ")
    for char in "|`*_[]<>#":
        text = text.replace(char, "\\" + char)
    return text


_FORMULA = re.compile(r"[\s\x00-\x1f\x7f]*[=+\-@]|[\t\r]")


def _spreadsheet_safe(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (=, +, -, @ first, also after leading whitespace or
    control characters; a tab or CR first) gets a leading quote (OWASP's advice); numbers are never touched.
    The writers quote every cell too (QUOTE_ALL), so a CR inside a name cannot start a row of its own."""
    if isinstance(value, str) and _FORMULA.match(value):
        return "'" + value
    return value


def plain_number(value: Any) -> Any:
    """A CSV cell: empty when unknown, floats in plain notation (0.00004, not 4e-05)."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value):
        return format(Decimal(repr(value)), "f")
    return value


def _rounded(percent: float | None) -> float | None:
    """Percentages and shares without float noise (54.50000000000001 -> 54.5); costs keep full precision."""
    return None if percent is None else float(f"{percent:.12g}")  # 12 significant digits: the noise is in the 16th


def to_markdown(report: Report) -> str:
    def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> list[str]:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
        lines += ["| " + " | ".join(map(_md, row)) + " |" for row in rows]
        return lines

    out = ["# LLM usage report", "", _md(headline(report)), "",
           f"Window: {_span(report.start, report.at, report.zone)} ({report.window}); previous window: "
           f"{_span(report.previous_start, report.previous_end, report.zone)}. Source: {report.prometheus}.",
           "", "## Totals", ""]
    out += table(("", "this window", "previous", "change"), _total_values(report), "lrrr")
    for kind in DIMENSIONS:
        out += ["", f"## {_kind_rows_title(report, kind)}", ""]
        out += table(_row_header(kind, report.currency), map(_row_values, kind_rows(report, kind)), "rlrrrrrrr")
    out += ["", "## Quotas", ""]
    if report.quotas_at is not None and report.quotas_at != report.at:
        out += [f"Where each principal stands at {local_time(report.quotas_at, report.zone)}.", ""]
    if not report.quotas:
        out.append("No principal has a recorded limit." if report.quota_rules else "No quota rules loaded.")
    for principal in (scope.name for scope in vocabulary.SCOPES):
        rows = [q for q in report.quotas if q.principal == principal]
        if rows:
            out += [f"### {principal.capitalize()}s", ""]
            out += table([h.format(principal=principal) for h in _QUOTA_HEADER],
                         (_quota_values(q, report.currency, report.zone) for q in rows), "lllrrrlr")
            out.append("")
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    return "\n".join(out).rstrip() + "\n"


def _row_dict(row: Row) -> dict[str, Any]:
    return {"rank": row.rank, "name": row.name, "input_tokens": row.input_tokens,
            "output_tokens": row.output_tokens, "total_tokens": row.total_tokens, "cost": row.cost,
            "share": _rounded(row.share), "requests": row.requests,
            "previous_total_tokens": row.previous_total_tokens, "change": _rounded(row.change)}


def _totals_dict(t: Totals) -> dict[str, Any]:
    return {"input_tokens": t.input_tokens, "output_tokens": t.output_tokens, "total_tokens": t.total_tokens,
            "cost": t.cost, "cost_by_currency": t.cost_by_currency, "requests": t.requests, "errors": t.errors,
            "estimated_tokens": t.estimated_tokens, "estimated_share": _rounded(t.estimated_share)}


def _window_dict(start: float, end: float) -> dict[str, Any]:
    return {"start": _iso(start), "end": _iso(end), "start_unix": start, "end_unix": end}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _end_percents(q: QuotaRow) -> dict[str, float | None]:
    """The use projected to the window's end; `month_end_percent` (the name before the year had one) for a month."""
    end = None if q.end_ratio is None else _rounded(100 * q.end_ratio)
    return {"window_end_percent": end, "month_end_percent": end if q.window == "month" else None}


def _span(start: float, end: float, zone: str) -> str:
    return f"{local_time(start, zone)} → {local_time(end, zone)}"


def to_dict(report: Report) -> dict[str, Any]:
    t, p = report.totals, report.previous
    return {
        "prometheus": report.prometheus,
        "window": {"duration": report.window, "seconds": report.window_seconds,
                   **_window_dict(report.start, report.at)},
        "previous_window": _window_dict(report.previous_start, report.previous_end),
        "timezone": report.zone,
        "currency": report.currency,
        "headline": headline(report),
        "totals": {**_totals_dict(t), "previous": _totals_dict(p),
                   "change": {k: _rounded(_change(getattr(t, k), getattr(p, k)))
                              for k in ("input_tokens", "output_tokens", "total_tokens", "cost", "requests",
                                        "errors")}},
        "top": report.top,
        **{_KIND_TITLE[kind]: [_row_dict(r) for r in kind_rows(report, kind)] for kind in DIMENSIONS},
        "counts": {_KIND_TITLE[kind]: report.counts.get(kind, 0) for kind in DIMENSIONS},
        "top_app": None if report.top_app is None else _row_dict(report.top_app),
        "quota_rules": report.quota_rules,
        "quotas": [{"principal": q.principal, "name": q.name, "quota": q.quota, "window": q.window,
                    "usage": q.usage, "limit": q.limit, "granted": q.granted, "ratio": _rounded(q.ratio),
                    "percent": _rounded(q.percent),
                    "resets_at": None if q.resets_at is None else _iso(q.resets_at),
                    "burn_rate_per_hour": q.burn_rate, **_end_percents(q),
                    "runs_out_at": None if q.runs_out_at is None else _iso(q.runs_out_at)}
                   for q in report.quotas],
        "notes": report.notes,
    }


def to_json(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, ensure_ascii=False) + "\n"


CSV_COLUMNS = ("kind", "name", "input_tokens", "output_tokens", "total_tokens", "cost", "share", "currency", "rank",
               "requests", "errors", "previous_total_tokens", "change", "quota", "window", "usage", "limit",
               "granted", "percent", "resets_at", "window_end_percent", "month_end_percent", "runs_out_at")


def to_csv(report: Report) -> str:
    """One row per entity: the totals (kind `total`), the top users, departments, apps and models, then one
    row per quota (kind `user_quota` / `department_quota` / `app_quota`). Numbers are plain, empty when unknown."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writeheader()

    def plain(value: Any) -> Any:
        return plain_number(_spreadsheet_safe(value))  # text checked, numbers (a negative change) never

    t = report.totals
    writer.writerow({k: plain(v) for k, v in {
        "kind": "total", "name": "all", "input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
        "total_tokens": t.total_tokens, "cost": t.cost, "share": 1.0 if t.total_tokens else 0.0,
        "currency": report.currency, "requests": t.requests, "errors": t.errors,
        "previous_total_tokens": report.previous.total_tokens,
        "change": _rounded(_change(t.total_tokens, report.previous.total_tokens)), "window": report.window}.items()})
    for kind in DIMENSIONS:
        for r in kind_rows(report, kind):
            data = _row_dict(r)
            writer.writerow({k: plain(v) for k, v in {**data, "kind": kind, "currency": report.currency,
                                                      "window": report.window}.items()})
    for q in report.quotas:
        writer.writerow({k: plain(v) for k, v in {
            "kind": f"{q.principal}_quota", "name": q.name, "quota": q.quota, "window": q.window,
            "usage": q.usage, "limit": q.limit, "granted": q.granted, "percent": _rounded(q.percent),
            "resets_at": None if q.resets_at is None else _iso(q.resets_at), **_end_percents(q),
            "runs_out_at": None if q.runs_out_at is None else _iso(q.runs_out_at),
            "currency": report.currency if q.quota == "cost" else None}.items()})
    return buffer.getvalue()


def print_table(report: Report, file: TextIO) -> None:
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    terminal = hasattr(file, "isatty") and file.isatty()
    # 132 off a terminal: the quota table's widest rows (a long name, a granted limit, a reset) on one line each
    console = Console(file=file, width=None if terminal else 132, highlight=False, soft_wrap=False)
    console.print(f"[bold]LLM usage[/bold] — {escape(headline(report))}")
    console.print(f"[dim]{escape(_span(report.start, report.at, report.zone))}, previous "
                  f"{escape(_span(report.previous_start, report.previous_end, report.zone))}; "
                  f"{escape(report.prometheus)}[/dim]")

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
        for row in kind_rows(report, kind):
            values = _row_values(row)
            table.add_row(values[0], Text(values[1]), *values[2:], style="dim" if row.name == UNATTRIBUTED else None)
        console.print(table)

    if report.quotas:
        quotas = Table(box=box.SIMPLE_HEAD, title="Quotas", title_justify="left", pad_edge=False)
        for i, header in enumerate(("principal", *_QUOTA_HEADER[1:])):
            # the name folds when the width runs out, never a number
            quotas.add_column(header, justify="left" if i < 3 or i == 6 else "right", no_wrap=i > 0,
                              overflow="fold" if i == 0 else "ellipsis")
        for q in report.quotas:
            values = _quota_values(q, report.currency, report.zone)
            style = "bold red" if q.ratio >= 1 else "yellow" if q.ratio >= 0.8 else None
            quotas.add_row(Text(f"{q.principal} {values[0]}"), *values[1:], style=style)
        console.print(quotas)
    else:
        console.print("Quotas: " + ("no principal has a recorded limit." if report.quota_rules
                                    else "no quota rules loaded."))
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/dim]")


