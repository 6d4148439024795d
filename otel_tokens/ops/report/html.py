"""The digest as an HTML page, for mail clients: the same headline, tables and notes as the markdown,
every name escaped (a user id is whatever a client sent; it must not become markup in an inbox)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

from otel_tokens.ops.report.model import DIMENSIONS, Report
from otel_tokens.ops.report.render import (
    _QUOTA_HEADER,
    _kind_rows_title,
    _quota_values,
    _row_header,
    _row_values,
    _span,
    _total_values,
    headline,
    kind_rows,
)
from otel_tokens.quota import vocabulary

_STYLE = ("body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;color:#1f2328}"
          "table{border-collapse:collapse;margin:0 0 18px}th,td{padding:3px 10px;border-bottom:1px solid #d0d7de}"
          "th{text-align:left;background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}"
          "h2{font-size:16px;margin:18px 0 6px}p.small{color:#57606a;font-size:12px}")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="{"n" if a == "r" else "t"}">{escape(str(v))}</td>'
                                    for v, a in zip(row, align, strict=False)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(report: Report, chart: bool = False) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>LLM usage report</title>"
             f"<style>{_STYLE}</style></head><body>",
             "<h1 style=\"font-size:20px\">LLM usage report</h1>",
             f"<p><strong>{escape(headline(report))}</strong></p>",
             f'<p class="small">Window: {escape(_span(report.start, report.at, report.zone))} '
             f"({escape(report.window)}). Source: {escape(report.prometheus)}.</p>",
             "<h2>Totals</h2>", _table(("", "this window", "previous", "change"), _total_values(report), "lrrr")]
    for kind in DIMENSIONS:
        parts += [f"<h2>{escape(_kind_rows_title(report, kind))}</h2>",
                  _table(_row_header(kind, report.currency), map(_row_values, kind_rows(report, kind)), "rlrrrrrrr")]
    parts.append("<h2>Quotas</h2>")
    if not report.quotas:
        parts.append("<p>" + ("No principal has a recorded limit." if report.quota_rules
                              else "No quota rules loaded.") + "</p>")
    for principal in (scope.name for scope in vocabulary.SCOPES):
        rows = [q for q in report.quotas if q.principal == principal]
        if rows:
            parts.append(_table([h.format(principal=principal) for h in _QUOTA_HEADER],
                                (_quota_values(q, report.currency, report.zone) for q in rows), "lllrrrlr"))
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
    parts.append('<p class="small">Sent by otel-tokens report' + ("; the chart is attached." if chart else ".")
                 + "</p></body></html>")
    return "\n".join(parts) + "\n"
