"""Calendar windows from hourly buckets, in the quota file's zone: the departments' month (their own window),
and the week, month and year of either scope. They lag by up to an hour and a quarter (an hour counts once it
is complete and written), which a week, a month or a year tolerates; a user's day does not (`day_rules`).

- *Hourly buckets* (`hourly_bucket_rule`), in a group evaluated every HOUR_ROLLUP_INTERVAL: each clock hour's
  usage, written once, labelled with the local month of its middle. In a zone off whole hours the buckets are
  half or quarter hours (`LocalTime.bucket`), so a bucket never straddles local midnight.
- *Month to date* (`month_usage_rule`): the buckets of the last 32 days labelled with the current month,
  recorded in the same group right after the buckets (it changes only then), read back by the 10 s group over
  HOUR_KEPT while its month is the current one (`calendar_read`).
- *Week to date*: the same over 8 days, each bucket labelled at read time with its ISO week.
- *Year to date*: the closed months of the year plus the month to date. A year is not 8,784 buckets read per
  evaluation: each closed month is recorded (`closed_month`, labelled) by a group of its own every hour, computed
  once a day at 00:00 UTC on the first two local days of the month after it, and the hours group sums this
  year's (`year_closed`) from those few samples. Until the month just closed is recorded (up to a day), its last
  month to date and its last bucket stand in for it.
"""

from __future__ import annotations

from typing import Any

from otel_tokens.ops.durations import human_duration
from otel_tokens.ops.local_time import LocalTime
from otel_tokens.ops.rollups import HOUR_KEPT, closed_hour, hourly_bucket
from otel_tokens.quota.calendar import MONTH, WEEK, YEAR, calendar_id
from otel_tokens.quota.vocabulary import COUNTERS, QuotaScope

HOUR_WINDOWS = (WEEK, MONTH, YEAR)  # the windows these rules build, for either scope
MONTH_SUBQUERY = "32d"
WEEK_SUBQUERY = "8d"
PREVIOUS_MONTH_SUBQUERY = "62d"  # from the last day of a month back to the start of the one before
CLOSED_SUBQUERY = "34d"  # a month and the two days after it (and a DST hour)
CLOSED_INTERVAL = "1h"
CLOSED_KEPT = "370d"  # how far back this year's closed months are read (a year and its first day)
GAP = "26h"  # the just-closed month's last month to date stands in until its total is recorded (the next UTC
# midnight, within a local day and a quarter hour, plus a DST hour)
PREFIX = "llm_quota"


def name(scope: QuotaScope, kind: str, what: str) -> str:
    return f"{PREFIX}:{scope.name}_{kind}:{what}"


def _count(label: str, window: str, local: LocalTime, utc: str) -> str:
    """`count_values` of the id of the local `window` holding the scalar UTC time `utc`: a `label` label."""
    return f'count_values("{label}", {calendar_id(window, local.seconds(utc))})'


def step(local: LocalTime) -> str:
    """The buckets' length as a PromQL duration: 1h, or 30m / 15m in zones off whole hours (LocalTime.bucket)."""
    return human_duration(local.bucket)


def bucket_name(scope: QuotaScope, kind: str, local: LocalTime) -> str:
    """llm_quota:department_tokens:1h (llm_quota:..._tokens:30m in Asia/Kolkata)."""
    return name(scope, kind, step(local))


def hourly_bucket_rule(scope: QuotaScope, kind: str, local: LocalTime) -> dict[str, Any]:
    """Each clock hour's usage (each half or quarter hour's off whole hours), written once, labelled with the local
    month of its middle when written (the zone's offset computed once per bucket, not at every step of every
    month's subquery)."""
    middle = f"time() - {local.bucket // 2}"
    month = f"+ on() group_left(month)\n(0 * {_count('month', MONTH, local, middle)})"
    return {"record": bucket_name(scope, kind, local),
            "expr": hourly_bucket(COUNTERS[kind], scope.label, month, local.bucket)}


def _hours(scope: QuotaScope, kind: str, local: LocalTime) -> str:
    """At a `[..:1h]` subquery's step, the bucket of the hour ending there. A version before the months were
    labelled wrote buckets without `month`: theirs is computed as that version did (UTC, at the bucket's
    middle), only for hours without a labelled bucket of the principal (the hour of an upgrade is written both
    ways: counted once). `+ 0`: last_over_time keeps the metric name, the joined side has none, and both are
    one series of the subquery (same labels): named on one step and not on the next would make two."""
    bucket, size = bucket_name(scope, kind, local), local.bucket
    with_month, without = closed_hour(bucket + '{month!=""}', size), closed_hour(bucket + '{month=""}', size)
    utc_month = _count("month", MONTH, LocalTime("UTC", None), f"time() - {size // 2}")
    return (f"      {with_month} + 0\n      or on({scope.label})\n      (\n        {without}\n"
            f"        + on() group_left(month)\n        (0 * {utc_month})\n      )")


def months(scope: QuotaScope, kind: str, local: LocalTime, subquery: str, when: str, by: str = "") -> str:
    """The hourly buckets of the subquery labelled with the local month of the local time `when` (a scalar
    expression of local seconds), summed per principal (and `by`). Only the wanted month's label is kept: no
    `@ end()` inside the subquery, which VictoriaMetrics 1.79 evaluates at the subquery's own (future) end."""
    hours = _hours(scope, kind, local)
    return (f"sum by ({scope.label}{by}) (\n  sum_over_time(\n    (\n{hours}\n    )[{subquery}:{step(local)}]\n"
            f"  )\n  and on(month)\n  count_values(\"month\", {calendar_id(MONTH, when)})\n)")


def month_usage_rule(scope: QuotaScope, kind: str, local: LocalTime) -> dict[str, Any]:
    return {"record": name(scope, kind, MONTH),
            "expr": months(scope, kind, local, MONTH_SUBQUERY, local.seconds("time()"), ", month")}


def previous_month_rule(scope: QuotaScope, kind: str, local: LocalTime) -> dict[str, Any]:
    """The whole previous month, which the month to date never shows complete (its last bucket is written
    after the month turned), for statements and dashboards to check against."""
    return {"record": name(scope, kind, "previous_month"),
            "expr": months(scope, kind, local, PREVIOUS_MONTH_SUBQUERY, _previous_month_time(local))}


def _previous_month_time(local: LocalTime) -> str:
    now = local.seconds("time()")
    return f"scalar(vector({now}) - day_of_month(vector({now})) * 86400)"  # a local time in the previous month


def week_usage_rule(scope: QuotaScope, kind: str, local: LocalTime) -> dict[str, Any]:
    """The ISO week to date, labelled `week`: each bucket of the last 8 days labelled with the week of its
    middle at read time (the offset of its own time), only the current week's kept."""
    week = _count("week", WEEK, local, f"time() - {local.bucket // 2}")
    hours = f"sum without (month) (\n{_hours(scope, kind, local)}\n)\n+ on() group_left(week) (0 * {week})"
    return {"record": name(scope, kind, WEEK),
            "expr": (f"sum by ({scope.label}, week) (\n  sum_over_time(\n(\n{hours}\n)[{WEEK_SUBQUERY}:{step(local)}]"
                     f"\n  )\n  and on(week)\n  {_count('week', WEEK, local, 'time()')}\n)")}


def closed_month_rule(scope: QuotaScope, kind: str, local: LocalTime) -> dict[str, Any]:
    """The previous local month's total, labelled `month`, in a group of its own evaluated every CLOSED_INTERVAL:
    computed by its one evaluation in the hour after 00:00 UTC (the subquery's one step; every local day holds
    one UTC midnight) and kept only on the first two local days of a month. Its cost is loading 34 days of hourly
    buckets, at every evaluation whether it computes or not (6 s at 1,000 users, measured): once an hour, not
    every 4 minutes. An outage over both those midnights loses the month from the year (`rules-backfill` can
    write it again)."""
    previous = _previous_month_time(local)
    first_days = f"day_of_month(vector({local.seconds('time()')})) <= 2"
    total = f"{months(scope, kind, local, CLOSED_SUBQUERY, previous, ', month')}\nand on() ({first_days})"
    return {"record": name(scope, kind, "closed_month"),
            "expr": f"last_over_time(\n(\n{total}\n)[{CLOSED_INTERVAL}:1d]\n)"}


def closed_months_group(scope: QuotaScope, kinds: list[str], local: LocalTime) -> dict[str, Any]:
    return {"name": f"{PREFIX}_{scope.name}_closed_months", "interval": CLOSED_INTERVAL,
            "rules": [closed_month_rule(scope, kind, local) for kind in kinds]}


def year_closed_rule(scope: QuotaScope, kind: str, local: LocalTime) -> dict[str, Any]:
    """The year's closed months, labelled `year`: per month the largest recorded total, the current month left
    out. Until the month that just closed is recorded (up to a day), its last month to date plus its last hour's
    bucket (written after the month turned, the last of that month's label) stand in for it."""
    label = scope.label
    to_date = f"sum by ({label}, month) (last_over_time({name(scope, kind, MONTH)}[{GAP}]))"
    last_hour = f'sum by ({label}, month) (last_over_time({bucket_name(scope, kind, local)}{{month!=""}}[{GAP}]))'
    per_month = (f"max by ({label}, month) (\n  max_over_time({name(scope, kind, 'closed_month')}[{CLOSED_KEPT}])\n"
                 f"  or ({to_date} + on({label}, month) {last_hour})\n  or {to_date}\n)\n"
                 f"unless on(month) {_count('month', MONTH, local, 'time()')}")
    with_year = f'label_replace(\n{per_month},\n"year", "$1", "month", "([0-9]{{4}})[0-9]{{2}}")'
    return {"record": name(scope, kind, "year_closed"),
            "expr": (f"sum by ({label}, year) (\n{with_year}\n)\n"
                     f"and on(year) {_count('year', YEAR, local, 'time()')}")}


def calendar_read(usage: str, window: str, local: LocalTime) -> str:
    """A window to date as the 10 s group reads it: the hours group's latest, over HOUR_KEPT (a late or
    restarted group), and only while its label is the current window (not a minute into the next)."""
    return (f"sum without ({window}) (\n  last_over_time({usage}[{HOUR_KEPT}])\n  and on({window})\n"
            f"  {_count(window, window, local, 'time()')}\n)")


def year_usage(scope: QuotaScope, kind: str, local: LocalTime) -> str:
    """The year to date, every 10 s: the closed months and the month to date, both read back."""
    closed = calendar_read(name(scope, kind, "year_closed"), YEAR, local)
    month = calendar_read(name(scope, kind, MONTH), MONTH, local)
    return (f"sum by ({scope.label}) (\nlabel_replace(\n{closed},\n\"part\", \"closed\", \"\", \"\")\n"
            f"or\n{month}\n)")


def hour_group_rules(scope: QuotaScope, kind: str, windows: set[str], local: LocalTime) -> list[dict[str, Any]]:
    """The hours group's rules of one kind for the hour windows in `windows`, in the order they read each other
    (promtool and Prometheus evaluate a group's rules in order; vmalert reads them back an interval later)."""
    rules = [hourly_bucket_rule(scope, kind, local)]
    if windows & {MONTH, YEAR}:
        rules.append(month_usage_rule(scope, kind, local))
    if WEEK in windows:
        rules.append(week_usage_rule(scope, kind, local))
    if YEAR in windows:  # closed_month_rule: in closed_months_group
        rules.append(year_closed_rule(scope, kind, local))
    return rules
