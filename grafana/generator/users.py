"""LLM tokens: users and departments: who spends the tokens, each principal against its quota, the room left,
the quota alerts firing, the grants in force, and the GPU protection limits (minute, concurrent) seen after the fact."""

from grafana_foundation_sdk.models.dashboard import Dashboard

from grafana.generator import gpu_panels, grant_panels, limit_panels
from grafana.generator import queries as q
from grafana.generator.panels import Column, LabelColumn, bargauge_panel, table_panel
from grafana.generator.quota_panels import (
    COLUMN,
    TRACES,
    every_window,
    forecasts,
    headroom_table,
    percent_of_limit,
    quota_table,
)
from grafana.generator.shell import finish, new_dashboard, warning_ratio
from otel_tokens import names
from otel_tokens.ops.forecast_rules import ALERTS as FORECAST_ALERTS
from otel_tokens.quota.vocabulary import APP, COST, DEPARTMENT, TOKENS, USER

UID = "otel-tokens-users"
FILE = "llm-users-departments.json"
TOKEN_METRIC, COST_METRIC, REQUESTS = names.PROM_LLM_TOKEN_USAGE, names.PROM_LLM_COST, names.PROM_LLM_REQUESTS
USER_COLUMN, DEPARTMENT_COLUMN = COLUMN[USER.name], COLUMN[DEPARTMENT.name]



def _top(scope_label: str, title: str) -> list:
    noun = "Users" if scope_label == q.USER else "Departments"
    return [
        bargauge_panel(f"Top {title} by tokens", f"{noun} with the most tokens over the selected time range.",
                       f"topk(10, {q.in_range(TOKEN_METRIC, scope_label)})", f"{{{{{scope_label}}}}}"),
        bargauge_panel(f"Top {title} by cost", f"{noun} with the highest cost over the selected time range.",
                       f"topk(10, {q.in_range(COST_METRIC, scope_label, q.CURRENCY)})",
                       f"{{{{{scope_label}}}}} ({{{{{q.CURRENCY}}}}})", decimals=2),
    ]


def build() -> Dashboard:
    board = new_dashboard(UID, "LLM tokens: users and departments",
                          "Who spends the tokens: top users and departments, quotas (rolling 24 h per user, calendar "
                          "month per department) and firing quota alerts.")
    warn = round(warning_ratio() * 100)
    requests_column = Column(q.in_range(REQUESTS, q.USER, q.DEPARTMENT), "Requests", decimals=0)
    active_users = (f"count by ({q.DEPARTMENT}) (count by ({q.DEPARTMENT}, {q.USER}) "
                    f"({q.increase(q.selector(TOKEN_METRIC))} > 0))")
    layout = [
        (8, 6, [*_top(q.USER, "users"), *_top(q.DEPARTMENT, "departments")]),
        (9, 12, [
            table_panel("Users", f"Usage per user over the selected time range. {TRACES}", [
                Column(q.in_range(TOKEN_METRIC, q.USER, q.DEPARTMENT), "Tokens"),
                Column(q.in_range(COST_METRIC, q.USER, q.DEPARTMENT), "Cost", decimals=4), requests_column],
                [USER_COLUMN, DEPARTMENT_COLUMN], sort_by="Tokens"),
            table_panel("Departments", "Usage per department over the selected time range.", [
                Column(q.in_range(TOKEN_METRIC, q.DEPARTMENT), "Tokens"),
                Column(q.in_range(COST_METRIC, q.DEPARTMENT), "Cost", decimals=4),
                Column(active_users, "Active users", decimals=0)], [DEPARTMENT_COLUMN], sort_by="Tokens")]),
        (9, 8, [
            *percent_of_limit(USER, TOKENS, "User token quota (24 h)",
                               "Each user's rolling 24 h tokens as a percentage of their limit (quota file, rendered "
                               f"by `otel-tokens rules`). Warning at {warn} %, critical at 100 %."),
            *percent_of_limit(USER, COST, "User cost quota (24 h)",
                               f"Each user's rolling 24 h cost as a percentage of their limit. Warning at {warn} %, "
                               "critical at 100 %."),
            table_panel("Firing quota alerts",
                        "Quota and budget alerts firing now (Prometheus ALERTS). Alertmanager inhibits a warning "
                        "while the matching critical fires; here both show.", [Column(q.FIRING_QUOTA_ALERTS, "Value")],
                        [LabelColumn("alertname", "Alert"), LabelColumn("severity", "Severity"), USER_COLUMN,
                         DEPARTMENT_COLUMN, COLUMN[APP.name], LabelColumn("window", "Window"),
                         LabelColumn("quota", "Quota")],
                        hidden=("Value", "__name__", "alertstate"), value_columns=False)]),
        (9, 12, [
            *quota_table(USER, "User quotas (24 h)",
                          "Usage in the rolling 24 h window, the limit in force (override or default) and the "
                          f"percentage, from the recorded llm_quota:* series. {TRACES}"),
            *quota_table(DEPARTMENT, "Department budgets (month to date, quota file time zone)",
                          "Month-to-date usage (hourly buckets of the current calendar month, so up to an hour "
                          "behind), the budget in force and the percentage, from the recorded llm_quota:* series.")]),
        (8, 12, [
            *percent_of_limit(DEPARTMENT, TOKENS, "Department token budget (month to date)",
                               "Each department's month-to-date tokens as a percentage of its monthly budget."),
            *percent_of_limit(DEPARTMENT, COST, "Department cost budget (month to date)",
                               "Each department's month-to-date cost as a percentage of its monthly budget.")]),
        (9, 12, [*headroom_table(USER), *headroom_table(DEPARTMENT)]),
        *grant_panels.rows(),
        (9, 12, [every_window(USER, "User quotas, every window (%)"),
                 every_window(DEPARTMENT, "Department budgets, every window (%)")]),
        (8, 24, [forecasts(DEPARTMENT, FORECAST_ALERTS[DEPARTMENT.name])]),
        *gpu_panels.rows(),
        *limit_panels.rows(),
    ]
    for height, width, panels in layout:
        for panel in panels:
            board = board.with_panel(panel.height(height).span(width))
    return finish(board)
