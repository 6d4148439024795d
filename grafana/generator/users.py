"""LLM tokens: users and departments: who spends the tokens, each principal against its quota, the room left,
and the quota alerts firing."""

from grafana_foundation_sdk.models.dashboard import Dashboard

from grafana.generator import queries as q
from grafana.generator.panels import Column, LabelColumn, bargauge_panel, quota_steps, table_panel
from grafana.generator.shell import finish, new_dashboard, warning_ratio
from otel_tokens import names
from otel_tokens.quota.vocabulary import COST, DEPARTMENT, TOKENS, USER, QuotaScope

UID = "otel-tokens-users"
FILE = "llm-users-departments.json"
TOKEN_METRIC, COST_METRIC, REQUESTS = names.PROM_LLM_TOKEN_USAGE, names.PROM_LLM_COST, names.PROM_LLM_REQUESTS
USER_COLUMN = LabelColumn(q.USER, "User")
DEPARTMENT_COLUMN = LabelColumn(q.DEPARTMENT, "Department")
TRACES = "Click a user for their traces in Tempo."
# How each scope's window reads in a title and a column.
WINDOW_TITLE = {USER.name: "24 h", DEPARTMENT.name: "month to date"}
WINDOW_COLUMN = {USER.name: "24 h", DEPARTMENT.name: "MTD"}
LIMIT_WORD = {USER.name: "limit", DEPARTMENT.name: "budget"}


def in_range(metric: str, *by: str) -> str:
    return q.total(q.increase(q.selector(metric)), *by)


def _top(scope_label: str, title: str) -> list:
    noun = "Users" if scope_label == q.USER else "Departments"
    return [
        bargauge_panel(f"Top {title} by tokens", f"{noun} with the most tokens over the selected time range.",
                       f"topk(10, {in_range(TOKEN_METRIC, scope_label)})", f"{{{{{scope_label}}}}}"),
        bargauge_panel(f"Top {title} by cost", f"{noun} with the highest cost over the selected time range.",
                       f"topk(10, {in_range(COST_METRIC, scope_label, q.CURRENCY)})",
                       f"{{{{{scope_label}}}}} ({{{{{q.CURRENCY}}}}})", decimals=2),
    ]


def _quota_table(scope: QuotaScope, title: str, description: str) -> list:
    """Usage in the scope's window, the limit in force and the percentage, tokens then cost."""
    steps = quota_steps(warning_ratio())
    window, limit = WINDOW_COLUMN[scope.name], LIMIT_WORD[scope.name]
    columns = []
    for kind, noun, one in ((TOKENS, "Tokens", "Token"), (COST, "Cost", "Cost")):
        columns += [
            Column(q.quota(scope, kind, scope.window), f"{noun} {window}", decimals=4 if kind == COST else None),
            Column(q.quota(scope, kind, "limit"), f"{one} {limit}"),
            Column(q.percent(q.quota(scope, kind, "ratio")), f"{noun} %", decimals=1, steps=steps),
        ]
    labels = [USER_COLUMN] if scope is USER else [DEPARTMENT_COLUMN]
    return [table_panel(title, description, columns, labels, sort_by="Tokens %")]


def headroom(scope: QuotaScope, kind: str) -> str:
    """The limit in force minus the usage in the window, never below 0."""
    limit, used = q.quota(scope, kind, "limit"), q.quota(scope, kind, scope.window)
    return f"clamp_min({limit} - on({scope.label}) {used}, 0)"


def _headroom_table(scope: QuotaScope) -> list:
    who = "user" if scope is USER else "department"
    columns = [Column(headroom(scope, TOKENS), "Tokens left"), Column(headroom(scope, COST), "Cost left", decimals=4)]
    labels = [USER_COLUMN] if scope is USER else [DEPARTMENT_COLUMN]
    description = (
        f"What each {who} may still spend in the {WINDOW_TITLE[scope.name]} window: the {LIMIT_WORD[scope.name]} in "
        "force minus the usage, never below 0, fewest first. In budget mode this is the room the next calls reserve "
        "their worst case against (the store counts the same usage, plus the calls in flight); in alert mode the "
        "room before the critical alert fires." + (f" {TRACES}" if scope is USER else ""))
    return [table_panel(f"{'User' if scope is USER else 'Department'} headroom ({WINDOW_TITLE[scope.name]})",
                        description, columns, labels, sort_by="Tokens left", descending=False)]


def _percent_of_limit(scope: QuotaScope, kind: str, title: str, description: str) -> list:
    return [bargauge_panel(title, description, f"sort_desc({q.percent(q.quota(scope, kind, 'ratio'))})",
                           f"{{{{{scope.label}}}}}", unit="percent", decimals=1, steps=quota_steps(warning_ratio()))]


def _every_window(scope: QuotaScope, title: str) -> object:
    return bargauge_panel(title, "Each window the quota file sets (24h, day, week, month, year, in its time zone) as "
                          "a percentage of its limit, tokens and cost: a principal near one limit while far from "
                          "another shows here. Week, month and year count whole hours (up to an hour and a quarter "
                          "behind).",
                          f"sort_desc({q.every_window_ratio(scope)})",
                          f"{{{{{scope.label}}}}} · {{{{window}}}} · {{{{quota}}}}", unit="percent", decimals=1,
                          steps=quota_steps(warning_ratio()))


def _forecasts() -> object:
    return bargauge_panel("Department budgets at the window's end, forecast (%)",
                          "Where each department's month and year (in the quota file's time zone) end at the current "
                          "burn rate, as a percentage of the budget: the usage so far plus the burn rate (the lower "
                          "of the last 6 h's average and the median hour of the last 24 h) times the hours left. "
                          "LLMDepartmentBudgetForecast fires at 100 % (for 30 min), with the day it runs out.",
                          f"sort_desc({q.every_window_ratio(DEPARTMENT, 'forecast_ratio')})",
                          f"{{{{{DEPARTMENT.label}}}}} · {{{{window}}}} · {{{{quota}}}}", unit="percent", decimals=1,
                          steps=((None, "green"), (100, "orange")))  # the forecast alert is a warning


def build() -> Dashboard:
    board = new_dashboard(UID, "LLM tokens: users and departments",
                          "Who spends the tokens: top users and departments, quotas (rolling 24 h per user, calendar "
                          "month per department) and firing quota alerts.")
    warn = round(warning_ratio() * 100)
    requests_column = Column(in_range(REQUESTS, q.USER, q.DEPARTMENT), "Requests", decimals=0)
    active_users = (f"count by ({q.DEPARTMENT}) (count by ({q.DEPARTMENT}, {q.USER}) "
                    f"({q.increase(q.selector(TOKEN_METRIC))} > 0))")
    layout = [
        (8, 6, [*_top(q.USER, "users"), *_top(q.DEPARTMENT, "departments")]),
        (9, 12, [
            table_panel("Users", f"Usage per user over the selected time range. {TRACES}", [
                Column(in_range(TOKEN_METRIC, q.USER, q.DEPARTMENT), "Tokens"),
                Column(in_range(COST_METRIC, q.USER, q.DEPARTMENT), "Cost", decimals=4), requests_column],
                [USER_COLUMN, DEPARTMENT_COLUMN], sort_by="Tokens"),
            table_panel("Departments", "Usage per department over the selected time range.", [
                Column(in_range(TOKEN_METRIC, q.DEPARTMENT), "Tokens"),
                Column(in_range(COST_METRIC, q.DEPARTMENT), "Cost", decimals=4),
                Column(active_users, "Active users", decimals=0)], [DEPARTMENT_COLUMN], sort_by="Tokens")]),
        (9, 8, [
            *_percent_of_limit(USER, TOKENS, "User token quota (24 h)",
                               "Each user's rolling 24 h tokens as a percentage of their limit (quota file, rendered "
                               f"by `otel-tokens rules`). Warning at {warn} %, critical at 100 %."),
            *_percent_of_limit(USER, COST, "User cost quota (24 h)",
                               f"Each user's rolling 24 h cost as a percentage of their limit. Warning at {warn} %, "
                               "critical at 100 %."),
            table_panel("Firing quota alerts",
                        "Quota and budget alerts firing now (Prometheus ALERTS). Alertmanager inhibits a warning "
                        "while the matching critical fires; here both show.", [Column(q.FIRING_QUOTA_ALERTS, "Value")],
                        [LabelColumn("alertname", "Alert"), LabelColumn("severity", "Severity"), USER_COLUMN,
                         DEPARTMENT_COLUMN, LabelColumn("window", "Window"), LabelColumn("quota", "Quota")],
                        hidden=("Value", "__name__", "alertstate"), value_columns=False)]),
        (9, 12, [
            *_quota_table(USER, "User quotas (24 h)",
                          "Usage in the rolling 24 h window, the limit in force (override or default) and the "
                          f"percentage, from the recorded llm_quota:* series. {TRACES}"),
            *_quota_table(DEPARTMENT, "Department budgets (month to date, quota file time zone)",
                          "Month-to-date usage (hourly buckets of the current calendar month, so up to an hour "
                          "behind), the budget in force and the percentage, from the recorded llm_quota:* series.")]),
        (8, 12, [
            *_percent_of_limit(DEPARTMENT, TOKENS, "Department token budget (month to date)",
                               "Each department's month-to-date tokens as a percentage of its monthly budget."),
            *_percent_of_limit(DEPARTMENT, COST, "Department cost budget (month to date)",
                               "Each department's month-to-date cost as a percentage of its monthly budget.")]),
        (9, 12, [*_headroom_table(USER), *_headroom_table(DEPARTMENT)]),
        (9, 12, [_every_window(USER, "User quotas, every window (%)"),
                 _every_window(DEPARTMENT, "Department budgets, every window (%)")]),
        (8, 24, [_forecasts()]),
    ]
    for height, width, panels in layout:
        for panel in panels:
            board = board.with_panel(panel.height(height).span(width))
    return finish(board)
