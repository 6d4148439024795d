"""LLM tokens: overview: tokens, cost, requests, errors, how the counts were obtained, guard decisions."""

from grafana_foundation_sdk.models.dashboard import Dashboard

from grafana.generator import queries as q
from grafana.generator.latency import requests_by_outcome
from grafana.generator.panels import bargauge_panel, stat_panel, timeseries_panel
from grafana.generator.shell import finish, new_dashboard
from otel_tokens import names

UID = "otel-tokens-overview"
FILE = "llm-overview.json"
TOKENS, COST, REQUESTS = names.PROM_LLM_TOKEN_USAGE, names.PROM_LLM_COST, names.PROM_LLM_REQUESTS
ESTIMATED = f'{q.SOURCE}="{names.SOURCE_ESTIMATED}"'
FAILED = f'{q.ERROR}!=""'



def per_second(metric: str, *by: str, extra: tuple[str, ...] = ()) -> str:
    return q.total(q.rate(q.selector(metric, *extra)), *by)


def build() -> Dashboard:
    board = new_dashboard(UID, "LLM tokens: overview",
                          "Tokens, cost, requests and errors of every instrumented LLM call (otel-tokens).")
    stats = [
        stat_panel("Tokens in range",
                   f"Input + output tokens ({names.METRIC_LLM_TOKEN_USAGE}) over the selected time range.",
                   q.in_range(TOKENS)),
        stat_panel("Cost in range", f"{names.METRIC_LLM_COST} over the selected time range, per reporting currency.",
                   q.in_range(COST, q.CURRENCY), legend=f"{{{{{q.CURRENCY}}}}}", decimals=2, with_names=True),
        stat_panel("Requests in range", f"LLM calls ({names.METRIC_LLM_REQUESTS}), failed ones included.",
                   q.in_range(REQUESTS), decimals=0),
        stat_panel("Errors in range", f"LLM calls that raised or failed ({names.ERROR_TYPE} set).",
                   f"{q.in_range(REQUESTS, extra=(FAILED,))} or {q.in_range(REQUESTS)} * 0", decimals=0,
                   steps=((None, "green"), (1, "red"))),
        stat_panel("Error ratio in range", "Failed calls / all calls over the selected time range.",
                   q.share(q.in_range(REQUESTS, extra=(FAILED,)), q.in_range(REQUESTS)), unit="percentunit",
                   steps=((None, "green"), (0.01, "orange"), (0.1, "red"))),
        stat_panel("Estimated share of tokens",
                   f"Share of tokens whose count is `{names.SOURCE_ESTIMATED}` (no tokenizer for the model and no "
                   "usage from the server). Map the model to a tokenizer to make it exact.",
                   q.share(q.in_range(TOKENS, extra=(ESTIMATED,)), q.in_range(TOKENS)), unit="percentunit",
                   steps=((None, "green"), (0.05, "orange"), (0.25, "red"))),
    ]
    for panel in stats:
        board = board.with_panel(panel.height(4).span(4))
    model = f"{{{{{q.MODEL}}}}}"
    board = board.with_panel(timeseries_panel(
        "Tokens/s by model and token type", f"Rate of {names.METRIC_LLM_TOKEN_USAGE} per model, input and output.",
        (per_second(TOKENS, q.MODEL, q.TOKEN_TYPE), f"{model} {{{{{q.TOKEN_TYPE}}}}}"), unit="short",
        stacked=True).height(9).span(12))
    board = board.with_panel(timeseries_panel(
        "Cost per hour by model", f"{names.METRIC_LLM_COST} rate per model, scaled to one hour, per currency.",
        (f"3600 * {per_second(COST, q.MODEL, q.CURRENCY)}", f"{model} ({{{{{q.CURRENCY}}}}})"), unit="short",
        stacked=True).height(9).span(12))
    rankings = [
        bargauge_panel("Tokens by model in range", "Input + output tokens per model over the selected time range.",
                       f"sort_desc({q.in_range(TOKENS, q.MODEL)})", model),
        bargauge_panel("Cost by model in range", f"{names.METRIC_LLM_COST} per model over the selected time range.",
                       f"sort_desc({q.in_range(COST, q.MODEL, q.CURRENCY)})", f"{model} ({{{{{q.CURRENCY}}}}})",
                       decimals=2),
        bargauge_panel("Tokens by count source in range",
                       f"How the counts were obtained: `{names.SOURCE_REPORTED}` by the server, "
                       f"`{names.SOURCE_COUNTED}` with the model's own tokenizer or tensors (exact), "
                       f"`{names.SOURCE_ESTIMATED}` (heuristic).",
                       f"sort_desc({q.in_range(TOKENS, q.SOURCE)})", f"{{{{{q.SOURCE}}}}}"),
    ]
    for panel in rankings:
        board = board.with_panel(panel.height(8).span(8))
    board = board.with_panel(timeseries_panel(
        "Estimated share by model", f"Share of each model's tokens that are `{names.SOURCE_ESTIMATED}`.",
        (q.share(per_second(TOKENS, q.MODEL, extra=(ESTIMATED,)), per_second(TOKENS, q.MODEL)), model),
        unit="percentunit", max_value=1).height(8).span(12))
    board = board.with_panel(timeseries_panel(
        "Requests/s by model and outcome", f"LLM calls per second; `ok` or the {names.ERROR_TYPE}.",
        (requests_by_outcome(), f"{model} {{{{{q.ERROR}}}}}"), unit="reqps", stacked=True).height(8).span(12))
    decisions = q.total(q.rate(q.selector(names.PROM_GUARD_DECISIONS, filters=("app",), app_optional=True)),
                        names.GUARD_DECISION, names.GUARD_SCOPE, names.GUARD_WINDOW)
    board = board.with_panel(timeseries_panel(
        "Quota guard decisions/s",
        f"Rate of {names.METRIC_GUARD_DECISIONS}: calls the quota guard rejected, downgraded, or let through "
        "unverified because the quota state was unreachable (fail_open / fail_closed), by the scope and window "
        "that decided (window minute or concurrent: budget mode's rate limits protecting the GPU). Scraped "
        "directly (not through the collector) the decisions carry no app: every app shows.",
        (decisions, f"{{{{{names.GUARD_DECISION}}}}} {{{{{names.GUARD_SCOPE}}}}} {{{{{names.GUARD_WINDOW}}}}}"),
        unit="reqps", stacked=True).height(8).span(24))
    return finish(board)
