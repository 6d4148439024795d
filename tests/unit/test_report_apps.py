"""The digest's "mostly from app": the app the money went to (by cost, among every app row), by tokens only when
nothing was priced; an app name is rendered as text like any other name."""

from __future__ import annotations

import csv
import io

from otel_tokens.ops.report.model import Report, Row, Totals
from otel_tokens.ops.report.queries import leading_app
from otel_tokens.ops.report.render import headline, to_csv, to_markdown


def _apps(priced: bool) -> list[Row]:
    cost = (lambda value: value) if priced else (lambda value: None)
    return [Row("app", "batch-summarize", 800, 400, cost(0.002), 6, share=0.75, rank=1),
            Row("app", "kb|chat", 150, 250, cost(0.018), 5, share=0.25, rank=2)]


def _report(priced: bool) -> Report:
    apps = _apps(priced)
    totals = Totals(950, 650, 0.02 if priced else None, requests=11, errors=0)
    return Report("http://prometheus:9090", 1_764_633_600.0, 86400.0, 1, "USD" if priced else None, totals,
                  Totals(), {"user": [], "department": [], "app": apps[:1], "model": []},
                  {"user": 0, "department": 0, "app": 2, "model": 0}, [], True, top_app=leading_app(apps, totals))


def test_the_leading_app_is_the_one_the_money_went_to_even_outside_the_top_rows():
    report = _report(priced=True)
    assert [r.name for r in report.rows["app"]] == ["batch-summarize"]  # --top 1: kb|chat is not shown
    assert headline(report).endswith("; mostly from app kb|chat (90.0 % of the cost).")


def test_without_prices_the_leading_app_is_the_one_with_most_tokens():
    assert headline(_report(priced=False)).endswith("; mostly from app batch-summarize (75.0 % of the tokens).")


def test_app_names_are_text_in_markdown_and_csv():
    report = _report(priced=True)
    lines = to_markdown(report).splitlines()
    assert "## Top apps by tokens (1 of 2)" in lines
    assert any("mostly from app kb\\|chat" in line for line in lines)  # the pipe cannot split the headline
    rows = [r for r in csv.DictReader(io.StringIO(to_csv(report))) if r["kind"] == "app"]
    assert [(r["name"], r["total_tokens"]) for r in rows] == [("batch-summarize", "1200")]
