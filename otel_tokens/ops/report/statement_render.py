"""A statement as text: JSON and CSV with every row, a table or markdown with the top rows."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, TextIO

from otel_tokens.ops.report.model import DIMENSIONS, Row, _pct, _utc
from otel_tokens.ops.report.render import _iso, _md, _rounded, _spreadsheet_safe, _tokens, format_money, plain_number
from otel_tokens.ops.report.statement import Line, Statement

_TITLES = {"department": "departments", "app": "apps", "user": "users", "model": "models"}
ORDER = ("department", "app", "user", "model")  # chargeback reads departments first, then the apps they run


def headline(s: Statement) -> str:
    t = s.totals
    zone = "" if s.period.zone == "UTC" else f"{s.period.zone}: "
    text = f"{s.period.label} ({zone}{_utc(s.period.start)} → {_utc(s.period.end)} UTC"
    text += ")" if s.complete else f", {s.status})"
    text += f": {t.total_tokens:,} tokens"
    if t.cost is not None:
        text += f", {s.currency} {format_money(t.cost)}"
    if t.requests is not None:
        text += f", {t.requests:,} requests"
    return text + "."


def _row(r: Row) -> dict[str, Any]:
    return {"name": r.name, "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
            "total_tokens": r.total_tokens, "cost": r.cost, "requests": r.requests, "share": _rounded(r.share)}


def _line(x: Line) -> dict[str, Any]:
    return {"day": _iso(x.day)[:10], "start": _iso(x.day), "end": _iso(x.day_end), "department": x.department,
            "app": x.app, "user": x.user, "model": x.model, "provider": x.provider, "token_type": x.token_type,
            "tokens": x.tokens, "estimated_tokens": x.estimated_tokens, "cost": x.cost}


def to_dict(s: Statement) -> dict[str, Any]:
    t = s.totals
    return {
        "statement": {"period": s.period.label, "timezone": s.period.zone, "start": _iso(s.period.start),
                      "end": _iso(s.period.end),
                      "start_unix": s.period.start, "end_unix": s.period.end, "through": _iso(s.end),
                      "complete": s.complete, "status": s.status,
                      "held_from": None if s.held_from is None else _iso(s.held_from)},
        "prometheus": s.prometheus,
        "generated_at": _iso(s.generated_at),
        "currency": s.currency,
        "headline": headline(s),
        "totals": {"input_tokens": t.input_tokens, "output_tokens": t.output_tokens, "total_tokens": t.total_tokens,
                   "cost": t.cost, "cost_by_currency": t.cost_by_currency, "requests": t.requests,
                   "errors": t.errors, "estimated_tokens": t.estimated_tokens},
        **{_TITLES[kind]: [_row(r) for r in s.rows[kind]] for kind in ORDER},
        "lines": [_line(x) for x in s.lines],
        "notes": s.notes,
    }


def to_json(s: Statement) -> str:
    return json.dumps(to_dict(s), indent=2, ensure_ascii=False) + "\n"


CSV_COLUMNS = ("kind", "name", "input_tokens", "output_tokens", "total_tokens", "cost", "currency", "requests",
               "share", "period", "period_start", "period_end", "complete")


def to_csv(s: Statement) -> str:
    """The total, then every department, app, user and model (no --top cap)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writeheader()
    common = {"currency": s.currency, "period": s.period.label, "period_start": _iso(s.period.start),
              "period_end": _iso(s.end), "complete": "true" if s.complete else "false"}
    t = s.totals
    rows: list[dict[str, Any]] = [{"kind": "total", "name": "all", "input_tokens": t.input_tokens,
                                   "output_tokens": t.output_tokens, "total_tokens": t.total_tokens,
                                   "cost": t.cost, "requests": t.requests, "share": 1.0 if t.total_tokens else 0.0}]
    rows += [{"kind": kind, **_row(r)} for kind in ORDER for r in s.rows[kind]]
    for row in rows:
        writer.writerow({k: plain_number(_spreadsheet_safe(v)) for k, v in {**row, **common}.items()})
    return buffer.getvalue()


def _shown(s: Statement, kind: str, top: int) -> tuple[list[Row], str]:
    rows = s.rows[kind]
    title = _TITLES[kind].capitalize() + (f" (top {top} of {len(rows)}; every row: --format csv or json)"
                                          if len(rows) > top else "")
    return rows[:top], title


def _cells(r: Row) -> tuple[str, ...]:
    return (r.name, _tokens(r.input_tokens), _tokens(r.output_tokens), _tokens(r.total_tokens), _pct(r.share),
            format_money(r.cost), _tokens(r.requests))


def _header(kind: str, currency: str | None) -> tuple[str, ...]:
    return (kind, "input", "output", "total", "share", f"cost ({currency})" if currency else "cost", "requests")


def to_markdown(s: Statement, top: int) -> str:
    out = [f"# LLM usage statement {s.period.label}", "", _md(headline(s)), "",
           f"Source: {s.prometheus}; generated {_utc(s.generated_at)} UTC; status: {s.status}.", ""]
    for kind in ORDER:
        rows, title = _shown(s, kind, top)
        out += [f"## {title}", "", "| " + " | ".join(_header(kind, s.currency)) + " |",
                "|:---|" + "---:|" * 6]
        out += ["| " + " | ".join(map(_md, _cells(r))) + " |" for r in rows]
        out.append("")
    if s.notes:
        out += ["## Notes", ""] + [f"- {_md(n)}" for n in s.notes]
    return "\n".join(out).rstrip() + "\n"


def print_table(s: Statement, top: int, file: TextIO) -> None:
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    terminal = hasattr(file, "isatty") and file.isatty()
    console = Console(file=file, width=None if terminal else 120, highlight=False, soft_wrap=False)
    console.print(f"[bold]LLM usage statement[/bold] — {escape(headline(s))}")
    console.print(f"[dim]{escape(s.prometheus)}; status: {escape(s.status)}[/dim]")
    for kind in ORDER:
        rows, title = _shown(s, kind, top)
        table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)
        for i, header in enumerate(_header(kind, s.currency)):
            table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True,
                             overflow="fold" if i == 0 else "ellipsis", max_width=40 if i == 0 else None)
        for r in rows:
            cells = _cells(r)
            table.add_row(Text(cells[0]), *cells[1:])
        console.print(table)
    for note in s.notes:
        console.print(f"[dim]note: {escape(note)}[/dim]")


assert set(ORDER) == set(DIMENSIONS)
