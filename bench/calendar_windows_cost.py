"""Cost of the week, month and year windows' rules per evaluation (issue 38), on a real Prometheus over the
hourly buckets and closed months the hours group writes, for N users in Asia/Shanghai.

    python bench/calendar_windows_cost.py [--users 1000] [--zone Asia/Shanghai]

Per size: each user's hourly buckets for the 62 days before now (labelled with the local month of each hour's
middle, as written), each closed month of the last year as `closed_month` writes it (24 samples during the first
local day of the month after it), and the last samples of the recorded month, week and year_closed, imported
with `promtool tsdb create-blocks-from openmetrics`. Timed as instant queries 10 minutes past an hour (median
of 5): each rule of the hours group (evaluated every 4 minutes) and each read of the 10 s group, as rendered by
`otel-tokens rules`, and per 10 s (the hours group's seconds / 24 plus the 10 s reads). The month to date and
the year's closed months are checked against the sums computed here. Ratios, not asserts; not in `make test`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import yaml  # noqa: E402
from _prometheus import binary, start  # noqa: E402
from department_month_cost import timed as timed_by  # noqa: E402

from otel_tokens.ops.hour_rules import calendar_read, year_usage  # noqa: E402
from otel_tokens.ops.local_time import LocalTime  # noqa: E402
from otel_tokens.ops.rules import render_text  # noqa: E402
from otel_tokens.quota.calendar import python_calendar_id  # noqa: E402
from otel_tokens.quota.file import parse_quotas  # noqa: E402
from otel_tokens.quota.vocabulary import USER  # noqa: E402

HOUR, DAY = 3600, 86400
NAME = "llm_quota:user_tokens"


def value(user: int, hour: int) -> int:
    return (user % 7 + 1) * 10 + hour % 5


def write_history(path: Path, users: int, end: int, zone: str) -> tuple[dict[str, float], dict[str, float]]:
    """The history, and the truth: each user's month to date and this year's closed months."""
    hours = range((end - 62 * DAY) // HOUR, end // HOUR + 1)
    month_of = {h: python_calendar_id("month", h * HOUR - HOUR // 2, zone) for h in hours}
    week_of = {h: python_calendar_id("week", h * HOUR - HOUR // 2, zone) for h in hours}
    now_month, now_week = python_calendar_id("month", end, zone), python_calendar_id("week", end, zone)
    year = python_calendar_id("year", end, zone)
    firsts = []  # (closed month id, first local day's hour starts)
    t = end
    for _ in range(13):  # back a month at a time: the first local day of each month of the last year
        m = python_calendar_id("month", t, zone)
        while python_calendar_id("month", t - DAY, zone) == m:
            t -= DAY
        start = t - t % HOUR
        while python_calendar_id("month", start - HOUR, zone) == m:
            start -= HOUR
        previous = python_calendar_id("month", start - HOUR, zone)
        if start < end - HOUR:
            firsts.append((previous, [start + i * HOUR for i in range(24) if start + i * HOUR <= end]))
        t = start - HOUR
    month_total = {u: sum(value(u, h) for h in hours if month_of[h] == now_month) for u in range(users)}
    week_total = {u: sum(value(u, h) for h in hours if week_of[h] == now_week) for u in range(users)}
    closed = {u: 1000 + u % 13 for u in range(users)}  # each closed month's total (any value: the reads are timed)
    with path.open("w") as out:
        out.write(f"# TYPE {NAME}:1h gauge\n")
        for u in range(users):
            for h in hours:
                out.write(f'{NAME}:1h{{user_id="u{u:05d}",month="{month_of[h]}"}} {value(u, h)} {h * HOUR}\n')
        out.write(f"# TYPE {NAME}:closed_month gauge\n")
        for u in range(users):
            for month, times in sorted(firsts):
                for t in times:
                    out.write(f'{NAME}:closed_month{{user_id="u{u:05d}",month="{month}"}} {closed[u]} {t}\n')
        for metric, label, ident, totals in (("month", "month", now_month, month_total),
                                             ("week", "week", now_week, week_total)):
            out.write(f"# TYPE {NAME}:{metric} gauge\n")
            for u in range(users):
                out.write(f'{NAME}:{metric}{{user_id="u{u:05d}",{label}="{ident}"}} {totals[u]} {end - 60}\n')
        out.write("# EOF\n")
    in_year = [m for m, _ in firsts if m // 100 == year and m != now_month]
    return ({f"u{u:05d}": float(month_total[u]) for u in range(users)},
            {f"u{u:05d}": float(closed[u] * len(set(in_year))) for u in range(users)})


def closed_rule(quotas: object) -> str:
    groups = yaml.safe_load(render_text(quotas))["groups"]  # type: ignore[arg-type]
    return next(r["expr"] for g in groups if g["name"] == "llm_quota_user_closed_months" for r in g["rules"])


def timed(url: str, expr: str, at: float) -> tuple[float, dict[str, float]]:
    return timed_by(url, expr, at, "user_id")


def measure(users: int, zone: str) -> None:
    end = (int(time.time()) // HOUR) * HOUR - HOUR + 600  # 10 minutes after an hour boundary, an hour back
    limits = {window: {"tokens": 1} for window in ("week", "month", "year")}
    quotas = parse_quotas({"timezone": zone, "users": {"default": limits}}, "bench quotas")
    local = LocalTime.of(zone)
    rules = {r["record"]: r["expr"] for g in yaml.safe_load(render_text(quotas))["groups"]
             if g["name"] == "llm_quota_user_hours" for r in g["rules"] if "record" in r}
    with tempfile.TemporaryDirectory(prefix="otel-tokens-calendar-bench-") as tmp:
        work = Path(tmp)
        month_truth, closed_truth = write_history(work / "history.om", users, end, zone)
        subprocess.run([binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(work / "history.om"),
                        str(work / "prom-data")], check=True, capture_output=True)
        url, process = start(work, retention="400d")
        try:
            hours_group = 0.0
            # the hourly bucket itself reads the raw counters like the departments' (bench/quota_rules_scale.py)
            for record in (f"{NAME}:month", f"{NAME}:week", f"{NAME}:year_closed"):
                seconds, result = timed(url, rules[record], end)
                hours_group += seconds
                check = ""
                if record.endswith(":month"):
                    check = f"  exact: {result == month_truth}"
                if record.endswith(":year_closed"):
                    check = f"  exact: {result == closed_truth}"
                print(f"  {users:>6} users  hours group (4 min)     {record:<34} {seconds * 1000:8.1f} ms{check}")
            closed = closed_rule(quotas)
            idle, _ = timed(url, closed, end)
            midnight = end - end % DAY + 600  # its one computation a day, 10 min past 00:00 UTC
            busy, _ = timed(url, closed, midnight if midnight <= end else midnight - DAY)
            print(f"  {users:>6} users  closed months (1 h)     {NAME + ':closed_month':<34} {idle * 1000:8.1f} ms, "
                  f"{busy * 1000:.1f} ms the hour it computes")
            closed_per_hour = (23 * idle + busy) / 24
            reads = 0.0
            for what, expr in (("month read", calendar_read(f"{NAME}:month", "month", local)),
                               ("week read", calendar_read(f"{NAME}:week", "week", local)),
                               ("year", year_usage(USER, "tokens", local))):
                seconds, _ = timed(url, expr, end)
                reads += seconds
                print(f"  {users:>6} users  10 s group           {what:<34} {seconds * 1000:8.1f} ms")
            print(f"  {users:>6} users  per 10 s: {hours_group / 24 + closed_per_hour / 360 + reads:.3f} s "
                  f"(hours group {hours_group:.3f} s every 4 min, closed months {closed_per_hour:.3f} s an hour on "
                  f"average, reads {reads:.3f} s every 10 s)")
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[1000])
    parser.add_argument("--zone", default="Asia/Shanghai")
    args = parser.parse_args()
    for users in args.users:
        measure(users, args.zone)


if __name__ == "__main__":
    main()
