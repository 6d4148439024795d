"""The quota panels of one scope (user, department, app), each the same for every scope but for its words: usage
against the limit in force, the percentage, the headroom, every window the quota file sets, the forecast."""

from grafana.generator import queries as q
from grafana.generator.panels import Column, LabelColumn, bargauge_panel, quota_steps, table_panel
from grafana.generator.shell import warning_ratio
from otel_tokens.quota.vocabulary import APP, COST, DEPARTMENT, TOKENS, USER, QuotaScope

COLUMN = {USER.name: LabelColumn(q.USER, "User"), DEPARTMENT.name: LabelColumn(q.DEPARTMENT, "Department"),
          APP.name: LabelColumn(q.APP, "App")}
TRACES = "Click a user for their traces in Tempo."
# How each scope's window reads in a title and a column, what its limit is called, who it is in a sentence.
WINDOW_TITLE = {USER.name: "24 h", DEPARTMENT.name: "month to date", APP.name: "month to date"}
WINDOW_COLUMN = {USER.name: "24 h", DEPARTMENT.name: "MTD", APP.name: "MTD"}
LIMIT_WORD = {USER.name: "limit", DEPARTMENT.name: "budget", APP.name: "budget"}
WHO = {USER.name: "user", DEPARTMENT.name: "department", APP.name: "app"}


def quota_table(scope: QuotaScope, title: str, description: str) -> list:
    """Usage in the scope's window, the limit in force and the percentage, tokens then cost."""
    window, limit, steps = WINDOW_COLUMN[scope.name], LIMIT_WORD[scope.name], quota_steps(warning_ratio())
    columns = []
    for kind, noun, one in ((TOKENS, "Tokens", "Token"), (COST, "Cost", "Cost")):
        columns += [
            Column(q.quota(scope, kind, scope.window), f"{noun} {window}", decimals=4 if kind == COST else None),
            Column(q.quota(scope, kind, "limit"), f"{one} {limit}"),
            Column(q.percent(q.quota(scope, kind, "ratio")), f"{noun} %", decimals=1, steps=steps),
        ]
    return [table_panel(title, description, columns, [COLUMN[scope.name]], sort_by="Tokens %")]


def headroom(scope: QuotaScope, kind: str) -> str:
    """The limit in force minus the usage in the window, never below 0."""
    limit, used = q.quota(scope, kind, "limit"), q.quota(scope, kind, scope.window)
    return f"clamp_min({limit} - on({scope.label}) {used}, 0)"


def headroom_table(scope: QuotaScope) -> list:
    who = WHO[scope.name]
    columns = [Column(headroom(scope, TOKENS), "Tokens left"), Column(headroom(scope, COST), "Cost left", decimals=4)]
    description = (
        f"What each {who} may still spend in the {WINDOW_TITLE[scope.name]} window: the {LIMIT_WORD[scope.name]} in "
        "force minus the usage, never below 0, fewest first. In budget mode this is the room the next calls reserve "
        "their worst case against (the store counts the same usage, plus the calls in flight); in alert mode the "
        "room before the critical alert fires." + (f" {TRACES}" if scope is USER else ""))
    return [table_panel(f"{who.capitalize()} headroom ({WINDOW_TITLE[scope.name]})", description, columns,
                        [COLUMN[scope.name]], sort_by="Tokens left", descending=False)]


def percent_of_limit(scope: QuotaScope, kind: str, title: str, description: str) -> list:
    return [bargauge_panel(title, description, f"sort_desc({q.percent(q.quota(scope, kind, 'ratio'))})",
                           f"{{{{{scope.label}}}}}", unit="percent", decimals=1, steps=quota_steps(warning_ratio()))]


def every_window(scope: QuotaScope, title: str) -> object:
    return bargauge_panel(title, "Each window the quota file sets (24h, day, week, month, year, in its time zone) as "
                          "a percentage of its limit, tokens and cost: a principal near one limit while far from "
                          "another shows here. Week, month and year count whole hours (up to an hour and a quarter "
                          "behind).",
                          f"sort_desc({q.every_window_ratio(scope)})",
                          f"{{{{{scope.label}}}}} · {{{{window}}}} · {{{{quota}}}}", unit="percent", decimals=1,
                          steps=quota_steps(warning_ratio()))


def forecasts(scope: QuotaScope, alert: str) -> object:
    """Where each principal's month and year end at the current burn rate (the calendar scopes only)."""
    who = WHO[scope.name]
    return bargauge_panel(f"{who.capitalize()} budgets at the window's end, forecast (%)",
                          f"Where each {who}'s month and year (in the quota file's time zone) end at the current "
                          "burn rate, as a percentage of the budget: the usage so far plus the burn rate (the lower "
                          "of the last 6 h's average and the median hour of the last 24 h) times the hours left. "
                          f"{alert} fires at 100 % (for 30 min), with the day it runs out.",
                          f"sort_desc({q.every_window_ratio(scope, 'forecast_ratio')})",
                          f"{{{{{scope.label}}}}} · {{{{window}}}} · {{{{quota}}}}", unit="percent", decimals=1,
                          steps=((None, "green"), (100, "orange")))  # the forecast alert is a warning
