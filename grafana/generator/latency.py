"""LLM tokens: latency: operation duration and time to first chunk per model, errors."""

from grafana_foundation_sdk.models.dashboard import Dashboard

from grafana.generator import queries as q
from grafana.generator.panels import timeseries_panel
from grafana.generator.shell import finish, new_dashboard
from otel_tokens import names

UID = "otel-tokens-latency"
FILE = "llm-latency.json"
NOT_ATTRIBUTED = ("The histogram carries the semconv attributes only: user and department do not apply, and App only "
                  "through the collector (scraped directly, the histogram has no app: every app shows).")


def requests_by_outcome() -> str:
    """Requests/s per model and error.type, the calls without one labelled `ok`."""
    by = q.total(q.rate(q.selector(names.PROM_LLM_REQUESTS)), q.MODEL, q.ERROR)
    return f'label_replace({by}, "{q.ERROR}", "ok", "{q.ERROR}", "")'


def build() -> Dashboard:
    board = new_dashboard(UID, "LLM tokens: latency",
                          "Operation duration, time to first chunk of streams and errors per model.")
    duration = f"{names.PROM_OPERATION_DURATION}_bucket"
    for quantile in ("0.5", "0.95", "0.99"):
        p = f"p{round(float(quantile) * 100)}"
        board = board.with_panel(timeseries_panel(
            f"Operation duration {p} by model",
            f"{p} of {names.METRIC_OPERATION_DURATION} per model (failed calls included). {NOT_ATTRIBUTED}",
            (q.quantile(quantile, duration), f"{{{{{q.MODEL}}}}}"), unit="s").height(8).span(8))
    first_chunk = f"{names.PROM_TIME_TO_FIRST_CHUNK}_bucket"
    errors = q.selector(names.PROM_LLM_REQUESTS, f'{q.ERROR}!=""')
    calls = q.total(q.rate(q.selector(names.PROM_LLM_REQUESTS)), q.MODEL)
    duration_sum = q.total(q.rate(q.semconv(f"{names.PROM_OPERATION_DURATION}_sum")),
                           q.MODEL)
    duration_count = q.total(
        q.rate(q.semconv(f"{names.PROM_OPERATION_DURATION}_count")), q.MODEL)
    panels = [
        timeseries_panel(
            "Time to first chunk (streams)",
            f"p50 / p95 / p99 of {names.METRIC_TIME_TO_FIRST_CHUNK} per model: streamed calls only. {NOT_ATTRIBUTED}",
            *[(q.quantile(quantile, first_chunk), f"{p} {{{{{q.MODEL}}}}}")
              for quantile, p in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))], unit="s"),
        timeseries_panel("Error ratio by model",
                         f"Failed calls / all calls per model ({names.METRIC_LLM_REQUESTS} with {names.ERROR_TYPE}).",
                         (q.share(q.total(q.rate(errors), q.MODEL), calls), f"{{{{{q.MODEL}}}}}"),
                         unit="percentunit", max_value=1),
        timeseries_panel("Mean operation duration by model", f"Average duration per call and model. {NOT_ATTRIBUTED}",
                         (f"{duration_sum}\n/ {duration_count}", f"{{{{{q.MODEL}}}}}"), unit="s"),
        timeseries_panel("Requests/s by model and outcome", f"LLM calls per second; `ok` or the {names.ERROR_TYPE}.",
                         (requests_by_outcome(), f"{{{{{q.MODEL}}}}} {{{{{q.ERROR}}}}}"), unit="reqps",
                         stacked=True),
    ]
    for panel in panels:
        board = board.with_panel(panel.height(8).span(12))
    return finish(board)
