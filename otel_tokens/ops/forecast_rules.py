"""Department (and app) budget forecasts: the window to date (month or year) plus the current burn rate projected to
the window's local end, so a department hears "runs out on the 27th" days before its budget's critical alert
fires.

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
from otel_tokens.quota.calendar import MONTH, YEAR
from otel_tokens.quota.vocabulary import QuotaScope

ALERT = "LLMDepartmentBudgetForecast"
ALERTS = {"department": ALERT, "app": "LLMAppBudgetForecast"}  # scope name -> its forecast alert
FOR = "30m"  # a projection is not urgent; a burn that lasts half an hour is a trend
SHORT, LONG = 6, 24  # hours of the two burn-rate windows


def hours_left(local: LocalTime, window: str = MONTH) -> str:
    """Hours from now to the end of the local month or year (a DST change still ahead in it makes it an hour
    off, which a projection tolerates)."""
    now = local.seconds("time()")
    if window == YEAR:  # local seconds at next New Year: 1970-01-01 + the days before that year (no day_of_year
        # in VictoriaMetrics 1.79)
        y = f"(year(vector({now})) + 1)"
        days = f"(365 * ({y} - 1970) + floor(({y} - 1969) / 4) - floor(({y} - 1901) / 100) + floor(({y} - 1601) / 400))"
        return f"scalar(({days} * 86400 - {now}) / 3600)"
    return (f"scalar((days_in_month(vector({now})) - day_of_month(vector({now}))) * 24 "
            f"+ (86400 - {now} % 86400) / 3600)")


def forecast_rules(scope: QuotaScope, kind: str, name: Callable[[str], str], local: LocalTime, read: str,
                   window: str = MONTH, burn_rate: bool = True) -> list[dict[str, Any]]:
    """Burn rate (unless `burn_rate` is False: another window of the kind records it), projected usage at the
    window's local end, its ratio to the limit, the exhaustion time, the alert; `name("month")` is the recorded
    series of that name for this scope and kind. A window other than the scope's own prefixes its names
    (`year_forecast`), as its limit and ratio are."""
    label, who = scope.label, scope.name.capitalize()
    # one series per principal: its hourly buckets are labelled with their month (max: the hour of an upgrade
    # is written both unlabelled and labelled, with the same value)
    size = local.bucket  # an hour, or a half / quarter hour in zones off whole hours: the burn stays per hour
    step = human_duration(size)
    bucket = f"max without (month) ({closed_hour(name(step), size)})"
    own = "" if window == scope.window else f"{window}_"
    usage, limit, burn = name(window), name(f"{own}limit"), name("burn_rate")
    forecast, ratio, exhaustion = (name(own + w) for w in ("forecast", "forecast_ratio", "exhaustion_time"))
    median = f"quantile_over_time(0.5, {bucket}[{LONG}h:{step}])"
    if size != 3600:
        median = f"{3600 // size} * {median}"  # the median bucket, per hour
    short_avg = f"(sum_over_time({bucket}[{SHORT}h:{step}]) or 0 * {median}) / {SHORT}"
    unit = " tokens" if kind == "tokens" else ""
    # the window to date, 0 in its first hour (no complete bucket yet) for a department still burning
    so_far = f"({read} or 0 * {burn})"  # `read`: the window to date as the 10 s group reads it
    span, title = ("calendar month", scope.titles[kind]) if window == MONTH else (
        "year", f"yearly {'token' if kind == 'tokens' else kind} budget")

    amount = "humanize" if kind == "tokens" else 'printf "%.2f"'  # humanize writes 0.2 as "200m"

    def value_of(metric: str, how: str = amount, missing: str = "") -> str:
        return (f'{{{{ with printf "{metric}{{{label}=%q}}" $labels.{label} | query }}}}'
                f"{{{{ . | first | value | {how} }}}}{{{{ else }}}}{missing}{{{{ end }}}}")

    when = value_of(exhaustion, "humanizeTimestamp")
    rules: list[dict[str, Any]] = [
        {"record": burn, "expr": f"({short_avg}) < ({median})\nor\n{median}"}] if burn_rate else []
    return rules + [
        {"record": forecast, "expr": f"({so_far} + {burn} * {hours_left(local, window)})\nor {read}"},
        {"record": ratio, "expr": f"{forecast}\n/ on({label}) {limit}"},
        # when the window to date plus the burn reaches the limit (past the window's end when the forecast is
        # short), to the minute
        {"record": exhaustion,
         "expr": f"round(time() + 3600 * ({limit} - on({label}) {so_far}) / on({label}) ({burn} > 0), 60)"},
        {
            "alert": ALERTS[scope.name],
            "expr": f"{ratio} >= 1",
            "for": FOR,
            "labels": {"severity": "warning", "window": window, "quota": kind},
            "annotations": {
                "summary": f"{who} {{{{ $labels.{label} }}}} is on course to exhaust its {title} on {when}",
                "description": f"{who} {{{{ $labels.{label} }}}} has used {value_of(usage, missing='0')}{unit} of "
                               f"{value_of(limit)}{unit} this {span} ({local.zone}); at its current rate "
                               f"({value_of(burn)}{unit} an hour: the lower of the last {SHORT} h's average and "
                               f"the median hour of the last {LONG} h) it reaches the budget on {when} and "
                               f"would end the {span.split()[-1]} at {{{{ $value | humanizePercentage }}}} of it.",
                "exhaustion": when,
                "forecast": value_of(forecast) + unit,
                "burn_rate": value_of(burn) + unit + " per hour",
                "percent": "{{ $value | humanizePercentage }}",
            },
        },
    ]
