"""`--png`: tokens by top user over time, cost by department and by app; draws only, never queries."""

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
    figure = Figure(figsize=(17, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    left, middle, right = figure.subplots(1, 3, width_ratios=[3, 2, 2])
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
    for axes, kind in ((middle, "department"), (right, "app")):
        _bars(axes, report, kind)
    figure.suptitle(headline(report), fontsize="medium", wrap=True)
    try:
        figure.savefig(path, format="png")
    except OSError as error:
        raise ReportError(f"cannot write {path}: {error.strerror or error}", DATA_ERROR) from None


def _bars(axes: Any, report: Report, kind: str) -> None:
    """The top rows of one dimension as bars: cost where anything was priced, else tokens."""
    rows = list(reversed(report.rows.get(kind, [])))
    priced = report.totals.cost is not None
    if priced:
        values = [r.cost or 0.0 for r in rows]
        axes.set_title(f"Cost by {kind} ({report.currency}), {report.span}")
        axes.set_xlabel(report.currency or "cost")
    else:
        values = [float(r.total_tokens) for r in rows]
        axes.set_title(f"Tokens by {kind}, {report.span} (no cost recorded)")
        axes.set_xlabel("tokens")
    bars = axes.barh([r.name for r in rows], values, color="tab:blue" if kind == "department" else "tab:green")
    axes.bar_label(bars, labels=[format_money(v) if priced else f"{_int(v):,}" for v in values], padding=3,
                   fontsize="small")
    axes.margins(x=0.25)


def _thousands() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _pos: f"{value:,.0f}")


