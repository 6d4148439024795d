"""The report trusts no name (issue 19): ids are whatever apps and proxies sent. Every format renders a
hostile name as text: rich markup is not interpreted, markdown tables keep their shape, CSV cells a
spreadsheet would run as formulas are quoted (the statements and the FOCUS export too), and JSON percentages
carry no float noise."""

from __future__ import annotations

import csv
import io
import json

import pytest

from otel_tokens.ops.report.focus import to_focus
from otel_tokens.ops.report.model import QuotaRow, Report, Row, Totals
from otel_tokens.ops.report.period import month
from otel_tokens.ops.report.render import print_table, to_csv, to_json, to_markdown
from otel_tokens.ops.report.statement import Line, Statement, _summaries
from otel_tokens.ops.report.statement_render import to_csv as statement_csv

HOSTILE = ["[/]", "[bold red]boss[/bold red]", '=HYPERLINK("http://evil.example","x")', "+1-2", "@SUM(A1)",
           "line\nbreak", "pipe|name", "__init__", "ops\r@SUM(1)", " =2+2", "\x01=2+2", "\t-3", "$\\invalidcmd{$"]
FORMULA_STARTS = ("=", "+", "-", "@", " ", "\x01", "\t", "\r")


def _report() -> Report:
    users = [Row("user", name, input_tokens=10, output_tokens=10 + i, cost=0.001, requests=1, share=0.125, rank=i + 1)
             for i, name in enumerate(HOSTILE)]
    quotas = [QuotaRow("user", name, "tokens", "24h", 109, 200) for name in HOSTILE]  # 54.50000000000001 %
    totals = Totals(input_tokens=80, output_tokens=108, cost=0.008, requests=8, errors=0)
    return Report("http://prometheus:9090", 1_764_633_600.0, 86400.0, 10, "USD", totals, Totals(),
                  {"user": users, "department": [], "model": []}, {"user": 8, "department": 0, "model": 0},
                  quotas, True)


def test_the_table_prints_names_as_text_not_markup():
    out = io.StringIO()
    print_table(_report(), out)  # "[/]" made rich raise (exit 1) before
    text = out.getvalue()
    assert "[/]" in text and "[bold red]boss[/bold red]" in text


def test_markdown_tables_keep_their_shape():
    lines = to_markdown(_report()).splitlines()
    rows = [line for line in lines if line.startswith("| ") and line[2:3].isdigit()]
    assert len(rows) == len(HOSTILE)
    assert all(line.count(" | ") == rows[0].count(" | ") for line in rows)  # no pipe or newline split a row
    assert any("line break" in line for line in rows) and any("pipe\\|name" in line for line in rows)
    assert any("\\_\\_init\\_\\_" in line for line in rows)


def test_csv_quotes_formula_cells_and_keeps_numbers():
    rows = list(csv.DictReader(io.StringIO(to_csv(_report()))))
    names = [r["name"] for r in rows if r["kind"] == "user"]
    assert "'=HYPERLINK(\"http://evil.example\",\"x\")" in names and "'+1-2" in names and "'@SUM(A1)" in names
    assert "[/]" in names and "line\nbreak" in names and "ops\r@SUM(1)" in names  # only formula starts are touched
    assert "' =2+2" in names and "'\x01=2+2" in names and "'\t-3" in names  # after whitespace or control chars too
    assert all(not n.startswith(FORMULA_STARTS) for n in names)
    assert len([r for r in rows if r["kind"] == "user"]) == len(HOSTILE)  # a CR inside a name split no row
    assert [r["percent"] for r in rows if r["kind"] == "user_quota"] == ["54.5"] * len(HOSTILE)
    assert [r["cost"] for r in rows if r["kind"] == "user"] == ["0.001"] * len(HOSTILE)


def test_json_keeps_names_exact_and_percentages_clean():
    data = json.loads(to_json(_report()))
    assert [u["name"] for u in data["users"]] == HOSTILE  # JSON escapes by itself: exact names
    assert {q["percent"] for q in data["quotas"]} == {54.5}
    assert {q["ratio"] for q in data["quotas"]} == {0.545}
    assert data["users"][0]["cost"] == pytest.approx(0.001, rel=1e-12)


def test_the_mail_escapes_names_in_html_and_keeps_headers_whole():
    from html.parser import HTMLParser

    from otel_tokens.ops.report.html import to_html
    from otel_tokens.ops.report.mail import build_message

    report = _report()
    report.rows["user"][0].name = "x\r\nBcc: victim@example.test"  # the headline (the subject) names the first
    report.rows["user"][1].name = "<script>alert(1)</script>"
    html = to_html(report)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    tags: set[str] = set()

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list) -> None:
            tags.add(tag)

    Tags().feed(html)
    assert tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "strong", "table", "thead",
                    "tbody", "tr", "th", "td", "ul", "li"}
    message = build_message(report, ["ops@example.test"], "otel-tokens@example.test", None)
    raw = message.as_bytes()
    headers = raw.split(b"\n\n", 1)[0].decode()
    assert "Bcc" not in message and "\nBcc:" not in headers  # the name stayed inside the Subject
    assert "x Bcc: victim@example.test" in message["Subject"]


def _statement() -> Statement:
    """A month's statement in which every user, department and model name is hostile."""
    period = month("2026-11")
    lines = [Line(period.start, period.start + 86400, user=name, department=name, model=name, provider="openai",
                  token_type="input", tokens=100, cost={"USD": 0.25}) for name in HOSTILE]
    totals, rows = _summaries(lines, None, False)
    return Statement("http://prometheus:9090", period, period.end, True, period.start, "USD", totals, rows, lines,
                     [], period.end + 3600)


def test_statement_csv_and_focus_quote_formula_cells_and_keep_names():
    rows = list(csv.DictReader(io.StringIO(statement_csv(_statement()))))
    for kind in ("user", "department", "model"):
        names = [r["name"] for r in rows if r["kind"] == kind]
        assert len(names) == len(HOSTILE) and "'=HYPERLINK(\"http://evil.example\",\"x\")" in names, kind
        assert all(not n.startswith(FORMULA_STARTS) for n in names) and "line\nbreak" in names
        assert "ops\r@SUM(1)" in names
    focus = list(csv.DictReader(io.StringIO(to_focus(_statement(), "acme"))))
    assert len(focus) == len(HOSTILE)
    for column in ("x_UserId", "x_Department", "SkuId", "ChargeDescription"):
        assert all(not r[column].startswith(FORMULA_STARTS) for r in focus), column
    assert "'@SUM(A1)" in [r["x_UserId"] for r in focus]
    # Tags is JSON: the name inside it is exact (it starts with "{", no spreadsheet runs it)
    assert sorted(json.loads(r["Tags"])["user_id"] for r in focus) == sorted(HOSTILE)
    assert [r["BilledCost"] for r in focus] == ["0.25"] * len(HOSTILE)


def test_every_csv_cell_is_quoted_so_a_cr_inside_a_name_stays_in_its_cell():
    """Python's csv module quotes a field with a CR only when the line terminator holds one: `ops\\r@SUM(1)`
    went out bare, and a spreadsheet started a row at the CR with a formula."""
    for text in (to_csv(_report()), statement_csv(_statement()), to_focus(_statement(), "acme")):
        assert '"ops\r@SUM(1)"' in text
        assert all(line.startswith('"') for line in text.split("\n") if line and not line.startswith("break"))


def test_the_chart_and_the_digest_take_names_as_text_not_mathtext(tmp_path):
    from otel_tokens.ops.report.mail import build_message
    from otel_tokens.ops.report.png import draw_png

    report = _report()
    path = tmp_path / "usage.png"
    draw_png(str(path), report, [1_764_633_600.0, 1_764_637_200.0],
             {name: [1, 2] for name in HOSTILE})  # `$\\invalidcmd{$` made matplotlib raise: exit 1, no digest
    assert path.read_bytes().startswith(b"\x89PNG")
    message = build_message(report, ["ops@example.test"], "otel-tokens@example.test", path.read_bytes())
    assert any(part.get_content_type() == "image/png" for part in message.walk())
