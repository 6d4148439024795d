"""Department budget forecasts: month-to-date plus the current burn rate projected to the month's end,
so a department hears "runs out on the 27th" days before its budget's critical alert fires.

The burn rate is the lower of the last 6 hours' average and the median hour of the last 24 hours
(from the same hourly buckets as the month-to-date): a spike of a few hours moves the average but
not the median, so it does not page; a department that has gone quiet drops out of the 6 h average,
and one with no bucket in the last 6 hours burns 0. A lasting rise shows in both within 12 hours.
Linear projection; the month-to-date lags by up to an hour, as the budget's own rule does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from otel_tokens.ops.durations import human_duration
from otel_tokens.ops.local_time import LocalTime
from otel_tokens.ops.rollups import closed_hour
from otel_tokens.quota.vocabulary import QuotaScope

ALERT = "LLMDepartmentBudgetForecast"
FOR = "30m"  # a projection is not urgent; a burn that lasts half an hour is a trend
SHORT, LONG = 6, 24  # hours of the two burn-rate windows


def hours_left(local: LocalTime) -> str:
    """Hours from now to the end of the local month: the whole days after today and the rest of today (a DST
    change still ahead in the month makes it an hour off, which a projection tolerates)."""
    now = local.seconds("time()")
    return (f"scalar((days_in_month(vector({now})) - day_of_month(vector({now}))) * 24 "
            f"+ (86400 - {now} % 86400) / 3600)")


def forecast_rules(scope: QuotaScope, kind: str, name: Callable[[str], str], local: LocalTime, read: str
                   ) -> list[dict[str, Any]]:
    """Burn rate, projected month-end usage, its ratio to the limit, the exhaustion time, the alert;
    `name("month")` is the recorded series of that name for this scope and kind."""
    label = scope.label
    # one series per principal: its hourly buckets are labelled with their month (max: the hour of an upgrade
    # is written both unlabelled and labelled, with the same value)
    size = local.bucket  # an hour, or a half / quarter hour in zones off whole hours: the burn stays per hour
    step = human_duration(size)
    bucket = f"max without (month) ({closed_hour(name(step), size)})"
    usage, limit = name("month"), name("limit")
    burn, forecast, ratio, exhaustion = (name(w) for w in ("burn_rate", "forecast", "forecast_ratio",
                                                              "exhaustion_time"))
    median = f"quantile_over_time(0.5, {bucket}[{LONG}h:{step}])"
    if size != 3600:
        median = f"{3600 // size} * {median}"  # the median bucket, per hour
    short_avg = f"(sum_over_time({bucket}[{SHORT}h:{step}]) or 0 * {median}) / {SHORT}"
    unit = " tokens" if kind == "tokens" else ""
    # the month-to-date, 0 in a month's first hour (no complete bucket yet) for a department still burning
    so_far = f"({read} or 0 * {burn})"  # `read`: the month to date as the 10 s group reads it

    amount = "humanize" if kind == "tokens" else 'printf "%.2f"'  # humanize writes 0.2 as "200m"

    def value_of(metric: str, how: str = amount, missing: str = "") -> str:
        return (f'{{{{ with printf "{metric}{{{label}=%q}}" $labels.{label} | query }}}}'
                f"{{{{ . | first | value | {how} }}}}{{{{ else }}}}{missing}{{{{ end }}}}")

    when = value_of(exhaustion, "humanizeTimestamp")
    return [
        {"record": burn, "expr": f"({short_avg}) < ({median})\nor\n{median}"},
        {"record": forecast, "expr": f"({so_far} + {burn} * {hours_left(local)})\nor {read}"},
        {"record": ratio, "expr": f"{forecast}\n/ on({label}) {limit}"},
        # when month-to-date plus the burn reaches the limit (past the month's end when the forecast is short),
        # to the minute
        {"record": exhaustion,
         "expr": f"round(time() + 3600 * ({limit} - on({label}) {so_far}) / on({label}) ({burn} > 0), 60)"},
        {
            "alert": ALERT,
            "expr": f"{ratio} >= 1",
            "for": FOR,
            "labels": {"severity": "warning", "window": scope.window, "quota": kind},
            "annotations": {
                "summary": f"Department {{{{ $labels.{label} }}}} is on course to exhaust its {scope.titles[kind]} "
                           f"on {when}",
                "description": f"Department {{{{ $labels.{label} }}}} has used {value_of(usage, missing='0')}{unit} of "
                               f"{value_of(limit)}{unit} this calendar month ({local.zone}); at its current rate "
                               f"({value_of(burn)}{unit} an hour: the lower of the last {SHORT} h's average and "
                               f"the median hour of the last {LONG} h) it reaches the budget on {when} and "
                               f"would end the month at {{{{ $value | humanizePercentage }}}} of it.",
                "exhaustion": when,
                "forecast": value_of(forecast) + unit,
                "burn_rate": value_of(burn) + unit + " per hour",
                "percent": "{{ $value | humanizePercentage }}",
            },
        },
    ]
