"""GPU protection: budget mode's per-call limits (`minute: {tokens, requests}`, `concurrent: K`) as Prometheus sees
them after the fact. The limits are enforced per call against Redis, where the sliding minute and the calls in flight
live; Prometheus holds the counters: the load each user put on the model servers per minute, and the refusals."""

from grafana.generator import queries as q
from grafana.generator.panels import bargauge_panel, timeseries_panel
from otel_tokens import names
from otel_tokens.quota.calendar import RATE_WINDOWS
from otel_tokens.quota.decision import QuotaExceededError, RateLimitExceededError
from otel_tokens.quota.vocabulary import REJECT

TOP = 10
USER_LEGEND = f"{{{{{q.USER}}}}}"
AFTER_THE_FACT = ("The limits themselves (quota file `minute: {tokens, requests}`, `concurrent: K`) are enforced per "
                  "call in budget mode, against the sliding minute and the calls in flight held in Redis; this panel "
                  "is the after-the-fact view from the metrics.")


def _refusal_types(error: type[QuotaExceededError] = QuotaExceededError) -> list[str]:
    """error_type of every refusal (a quota, rate or concurrency limit, fail_closed, unattributed): a refused call
    is counted in the requests counter with its error's type, but never reached a model server."""
    return [error.__qualname__, *(name for sub in error.__subclasses__() for name in _refusal_types(sub))]


SERVED = f'{q.ERROR}!~"{"|".join(_refusal_types())}"'  # sent to a server (failed ones included): what a minute counts
RATE_REFUSED = f'{q.ERROR}="{RateLimitExceededError.__qualname__}"'


def _per_minute(metric: str, *extra: str) -> str:
    return f"topk({TOP}, 60 * {q.total(q.rate(q.selector(metric, *extra)), q.USER)})"


def rows() -> list[tuple[int, int, list]]:
    """(height, width, panels) rows of the users and departments dashboard."""
    per_user = q.in_range(names.PROM_LLM_REQUESTS, q.USER, extra=(RATE_REFUSED,))
    # every user with calls shows, 0 where none was refused (a user with no refusal is not "no data")
    refused = f"topk({TOP}, {per_user} or {q.in_range(names.PROM_LLM_REQUESTS, q.USER)} * 0)"
    decisions = q.selector(names.PROM_GUARD_DECISIONS, f'{names.GUARD_DECISION}="{REJECT}"',
                           f'{names.GUARD_WINDOW}=~"{"|".join(RATE_WINDOWS)}"', filters=("app",), app_optional=True)
    return [
        (8, 12, [
            timeseries_panel(
                f"GPU protection: requests per minute by user (top {TOP})",
                f"Calls each user sent to a model server per minute ({names.METRIC_LLM_REQUESTS}, refused calls "
                "left out, failed ones counted as the minute limit counts them), averaged over the rate interval: "
                f"a burst shorter than that shows lower than its peak. {AFTER_THE_FACT}",
                (_per_minute(names.PROM_LLM_REQUESTS, SERVED), USER_LEGEND), unit="short"),
            timeseries_panel(
                f"GPU protection: tokens per minute by user (top {TOP})",
                f"Input + output tokens per user per minute ({names.METRIC_LLM_TOKEN_USAGE}, what a `minute: "
                "{tokens}` limit counts), averaged over the rate interval. The calls in flight (`concurrent`) are "
                f"not in Prometheus: ask quota_status() for them. {AFTER_THE_FACT}",
                (_per_minute(names.PROM_LLM_TOKEN_USAGE), USER_LEGEND), unit="short")]),
        (8, 12, [
            bargauge_panel(
                f"GPU protection: calls refused by a rate or concurrency limit, by user (top {TOP})",
                f"Calls refused with {RateLimitExceededError.__qualname__} (HTTP 429 with Retry-After) over the "
                "selected time range, by user: a `minute` or `concurrent` limit of the user, their department or "
                "their app was reached. Counted only for users who already have calls recorded (a flood under "
                f"made-up names adds no series); every refusal is in the panel beside. {AFTER_THE_FACT}",
                refused, USER_LEGEND, decimals=0),
            timeseries_panel(
                "GPU protection: rate and concurrency refusals/s by scope and window",
                f"Rate of {names.METRIC_GUARD_DECISIONS} rejections by a `minute` (tokens or requests in the last "
                "60 s) or `concurrent` (calls in flight) limit, by the scope whose limit was reached (user, "
                "department, app). The decisions carry no user; scraped directly (not through the collector) no app "
                f"either: every app shows. {AFTER_THE_FACT}",
                (q.total(q.rate(decisions), names.GUARD_SCOPE, names.GUARD_WINDOW),
                 f"{{{{{names.GUARD_SCOPE}}}}} {{{{{names.GUARD_WINDOW}}}}}"), unit="reqps", stacked=True)]),
    ]
