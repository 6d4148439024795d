"""`--png`: tokens by top user over time and cost by department; draws only, never queries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from otel_tokens.ops.report.model import DATA_ERROR, UNATTRIBUTED, USAGE_ERROR, Report, ReportError, _int
from otel_tokens.ops.report.render import format_money, headline
from otel_tokens.quota.calendar import load_zone


def draw_png(path: str, report: Report, times: Sequence[float], lines: Mapping[str, Sequence[int]]) -> None:
    """The figure from a built report and its timeline (queried beforehand: see queries.token_timeline)."""
    try:
        import matplotlib
    except ImportError:
        raise ReportError("--png needs matplotlib: pip install 'otel-tokens[report]'", USAGE_ERROR) from None
    # names are text, never mathtext: a user named `$\\invalidcmd{$` made the whole digest fail
    with matplotlib.rc_context({"text.parse_math": False}):
        _draw(path, report, times, lines)


def _draw(path: str, report: Report, times: Sequence[float], lines: Mapping[str, Sequence[int]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    users = [r.name for r in report.rows["user"] if r.name != UNATTRIBUTED]
    zone = timezone.utc if report.zone == "UTC" else load_zone(report.zone)
    moments = [datetime.fromtimestamp(t, timezone.utc).astimezone(zone) for t in times]
    figure = Figure(figsize=(13, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, width_ratios=[3, 2])
    for user in users:
        left.plot(moments, lines[user], marker="o" if len(moments) <= 30 else None, markersize=3, label=user)
    left.set_title(f"Tokens {report.span} by top users (cumulative)")
    left.xaxis_date(zone)  # ticks in local time: matplotlib would write UTC
    left.set_xlabel(f"time ({report.zone})")
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
        right.set_title(f"Cost by department ({report.currency}), {report.span}")
        right.set_xlabel(report.currency or "cost")
    else:
        values = [float(r.total_tokens) for r in departments]
        right.set_title(f"Tokens by department, {report.span} (no cost recorded)")
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


