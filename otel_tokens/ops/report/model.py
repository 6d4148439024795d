"""The report's vocabulary: what a report holds, its labels and windows, its errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from otel_tokens import names
from otel_tokens.ops.durations import duration_seconds, human_duration
from otel_tokens.ops.rollups import usage_over

PROG = "otel-tokens report"
FORMATS = ("table", "markdown", "json", "csv", "focus")
USAGE_ERROR, DATA_ERROR, CONNECTION_ERROR = 2, 1, 3

TOKENS, COST, REQUESTS = names.PROM_LLM_TOKEN_USAGE, names.PROM_LLM_COST, names.PROM_LLM_REQUESTS
USER = names.prometheus_label(names.USER_ID)
DEPARTMENT = names.prometheus_label(names.DEPARTMENT)
APP = names.prometheus_label(names.SERVICE_NAME)  # the calling process's service.name, on our counters' points
MODEL = names.prometheus_label(names.GEN_AI_REQUEST_MODEL)
TOKEN_TYPE = names.prometheus_label(names.GEN_AI_TOKEN_TYPE)
SOURCE = names.prometheus_label(names.LLM_USAGE_SOURCE)
OPERATION = names.prometheus_label(names.GEN_AI_OPERATION_NAME)
ERROR = names.prometheus_label(names.ERROR_TYPE)
CURRENCY = names.prometheus_label(names.CURRENCY)
DIMENSIONS = {"user": USER, "department": DEPARTMENT, "app": APP, "model": MODEL}
UNATTRIBUTED = names.UNATTRIBUTED  # usage no one claimed: the recorder's principal, and series with no value
MAX_BUCKETS = 96  # points of the --png timeline
CALENDAR_DIGESTS = ("today", "yesterday")  # --window values that are local days, not durations



class ReportError(Exception):
    """One line for stderr and the exit status: 2 usage, 1 data, 3 connection."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --- durations ----------------------------------------------------------------------------------
def parse_window(text: str) -> float:
    """Seconds in a Prometheus duration such as 24h, 7d, 90m, 1h30m."""
    try:
        seconds = duration_seconds(text)
    except ValueError:
        raise ReportError(f"bad window {text!r}: use a Prometheus duration such as 24h, 7d, 90m or 1h30m, or "
                          "today / yesterday (local days)",
                          USAGE_ERROR) from None
    if seconds <= 0:
        raise ReportError(f"bad window {text!r}: it must be longer than zero", USAGE_ERROR)
    return seconds


def usage_by(counter: str, labels: Sequence[str], window: str) -> str:
    """`rules.usage_over` (exact per-series window sums, as the quota rules compute them) summed by
    several labels, e.g. user x token type; series are filtered on the first label."""
    return usage_over(counter, labels[0], window, by=labels)



# --- the report -----------------------------------------------------------------------------------
@dataclass
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    cost_by_currency: dict[str, float] = field(default_factory=dict)
    requests: int | None = None
    errors: int | None = None
    estimated_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def estimated_share(self) -> float:
        return self.estimated_tokens / self.total_tokens if self.total_tokens else 0.0


@dataclass
class Row:
    """One user, department, app or model in the window."""

    kind: str
    name: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    requests: int | None = None
    previous_total_tokens: int = 0
    share: float = 0.0
    rank: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def change(self) -> float | None:
        return _change(self.total_tokens, self.previous_total_tokens)


@dataclass
class QuotaRow:
    principal: str  # a quota scope name: user | department | app
    name: str
    quota: str  # tokens | cost
    window: str  # 24h | day | week | month | year
    usage: float  # an int for tokens
    limit: float
    resets_at: float | None = None  # unix time the calendar window ends (local midnight); None for the rolling 24 h
    # departments' month and year: the rules' burn rate (per hour) and where it leads by the window's end
    burn_rate: float | None = None
    runs_out_at: float | None = None  # unix time the limit is reached, when before the window's end
    end_ratio: float | None = None  # usage / limit at the window's end at that rate
    granted: float = 0.0  # how much of `limit` the grants in force add (an int for tokens)

    @property
    def ratio(self) -> float:
        return self.usage / self.limit

    @property
    def percent(self) -> float:
        return 100.0 * self.ratio


@dataclass
class Report:
    prometheus: str
    at: float
    window_seconds: float
    top: int
    currency: str | None
    totals: Totals
    previous: Totals
    rows: dict[str, list[Row]]  # kind -> top rows
    counts: dict[str, int]  # kind -> how many had usage
    quotas: list[QuotaRow]
    quota_rules: bool
    notes: list[str] = field(default_factory=list)
    window_text: str | None = None  # the window as the user wrote it (24h rather than 1d; today, yesterday)
    zone: str = "UTC"  # the organization's: the report's times, `today`, `yesterday` and the quotas' resets
    previous_at: float | None = None  # the comparison window's end (default: this window's start)
    previous_seconds: float | None = None  # its length (default: this window's)
    quotas_at: float | None = None  # when the quota table stands (default: the window's end)
    # the app with the largest share of the window's cost (of its tokens when nothing was priced), among every
    # app row, not only the top ones: the digest's "mostly from app kb-chat"
    top_app: Row | None = None

    @property
    def window(self) -> str:
        return self.window_text or human_duration(self.window_seconds)

    @property
    def start(self) -> float:
        return self.at - self.window_seconds

    @property
    def previous_end(self) -> float:
        return self.start if self.previous_at is None else self.previous_at

    @property
    def previous_start(self) -> float:
        return self.previous_end - (self.window_seconds if self.previous_seconds is None else self.previous_seconds)

    @property
    def calendar(self) -> bool:
        """A local day (`today`, `yesterday`) rather than a duration ending at `at`."""
        return self.window_text in CALENDAR_DIGESTS

    @property
    def span(self) -> str:
        """The window in a sentence: "over the last 24h", "yesterday"."""
        return self.window if self.calendar else f"over the last {self.window}"


def _change(current: float | None, previous: float | None) -> float | None:
    if current is None or previous is None or previous == 0:
        return None
    return current / previous - 1.0


def _int(value: float) -> int:
    return round(value)


def _cost(value: float) -> float:
    return round(value, 12)  # drop float noise from adding many small costs

def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def local_time(t: float, zone: str, seconds: bool = True) -> str:
    """The time in the organization's zone with its zone: "2026-12-07 08:00:00 UTC", "2026-12-08 00:00 +08:00"."""
    if zone == "UTC":
        return f"{_utc(t) if seconds else _utc(t)[:16]} UTC"
    from otel_tokens.quota.calendar import load_zone

    moment = datetime.fromtimestamp(t, timezone.utc).astimezone(load_zone(zone))
    text = moment.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{text} {moment.strftime('%z')[:3]}:{moment.strftime('%z')[3:]}"


def _pct(fraction: float | None) -> str:
    return "—" if fraction is None else f"{100 * fraction:.1f} %"
