"""LLM tokens: apps: what each app (the instrumented process's service.name) spends over time and in the range,
each app against its budgets (the quota file's `apps:`), the room left and where its month ends."""

from grafana_foundation_sdk.models.dashboard import Dashboard

from grafana.generator import queries as q
from grafana.generator.panels import Column, bargauge_panel, table_panel, timeseries_panel
from grafana.generator.quota_panels import (
    COLUMN,
    every_window,
    forecasts,
    headroom_table,
    percent_of_limit,
    quota_table,
)
from grafana.generator.shell import finish, new_dashboard, warning_ratio
from otel_tokens import names
from otel_tokens.ops.forecast_rules import ALERTS as FORECAST_ALERTS
from otel_tokens.quota.vocabulary import APP, COST, TOKENS

UID = "otel-tokens-apps"
FILE = "llm-apps.json"
TOKEN_METRIC, COST_METRIC, REQUESTS = names.PROM_LLM_TOKEN_USAGE, names.PROM_LLM_COST, names.PROM_LLM_REQUESTS
LEGEND = f"{{{{{q.APP}}}}}"
COST_LEGEND = f"{LEGEND} ({{{{{q.CURRENCY}}}}})"



def per_second(metric: str, *by: str) -> str:
    return q.total(q.rate(q.selector(metric)), *by)


def build() -> Dashboard:
    board = new_dashboard(UID, "LLM tokens: apps",
                          "What each app (service.name, OTEL_SERVICE_NAME) spends, and each app against its monthly "
                          "budget (the quota file's apps section).")
    warn = round(warning_ratio() * 100)
    active_users = (f"count by ({q.APP}) (count by ({q.APP}, {q.USER}) "
                    f"({q.increase(q.selector(TOKEN_METRIC))} > 0))")
    layout = [
        (8, 8, [
            bargauge_panel("Tokens by app in range", "Input + output tokens per app over the selected time range.",
                           f"sort_desc({q.in_range(TOKEN_METRIC, q.APP)})", LEGEND),
            bargauge_panel("Cost by app in range", f"{names.METRIC_LLM_COST} per app over the selected time range.",
                           f"sort_desc({q.in_range(COST_METRIC, q.APP, q.CURRENCY)})", COST_LEGEND, decimals=2),
            table_panel("Apps", "Usage per app over the selected time range.", [
                Column(q.in_range(TOKEN_METRIC, q.APP), "Tokens"),
                Column(q.in_range(COST_METRIC, q.APP), "Cost", decimals=4),
                Column(q.in_range(REQUESTS, q.APP), "Requests", decimals=0),
                Column(active_users, "Active users", decimals=0)], [COLUMN[APP.name]], sort_by="Tokens")]),
        (9, 12, [
            timeseries_panel("Tokens/s by app", f"Rate of {names.METRIC_LLM_TOKEN_USAGE} per app.",
                             (per_second(TOKEN_METRIC, q.APP), LEGEND), unit="short", stacked=True),
            timeseries_panel("Cost per hour by app",
                             f"{names.METRIC_LLM_COST} rate per app, scaled to one hour, per currency.",
                             (f"3600 * {per_second(COST_METRIC, q.APP, q.CURRENCY)}", COST_LEGEND), unit="short",
                             stacked=True)]),
        (9, 24, quota_table(APP, "App budgets (month to date, quota file time zone)",
                            "Month-to-date usage (hourly buckets of the current calendar month, so up to an hour "
                            "behind), the budget in force (override or default) and the percentage, from the "
                            "recorded llm_quota:* series.")),
        (8, 12, [
            *percent_of_limit(APP, TOKENS, "App token budget (month to date)",
                              "Each app's month-to-date tokens as a percentage of its monthly budget. Warning at "
                              f"{warn} %, critical at 100 % (LLMAppTokenBudget)."),
            *percent_of_limit(APP, COST, "App cost budget (month to date)",
                              "Each app's month-to-date cost as a percentage of its monthly budget. Warning at "
                              f"{warn} %, critical at 100 % (LLMAppCostBudget).")]),
        (9, 12, [*headroom_table(APP), every_window(APP, "App budgets, every window (%)")]),
        (8, 24, [forecasts(APP, FORECAST_ALERTS[APP.name])]),
    ]
    for height, width, panels in layout:
        for panel in panels:
            board = board.with_panel(panel.height(height).span(width))
    return finish(board)
