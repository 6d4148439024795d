"""PromQL of the dashboards, spelled from otel_tokens.names and the rule renderer's series names, never retyped."""

from otel_tokens import names
from otel_tokens.ops.forecast_rules import ALERTS as FORECAST_ALERTS
from otel_tokens.ops.rules import PREFIX, series
from otel_tokens.quota import vocabulary
from otel_tokens.quota.calendar import WINDOWS

SERVICE = "job"  # the collector's Prometheus exporter sets job from service.name
MODEL = names.prometheus_label(names.GEN_AI_REQUEST_MODEL)
TOKEN_TYPE = names.prometheus_label(names.GEN_AI_TOKEN_TYPE)
SOURCE = names.prometheus_label(names.LLM_USAGE_SOURCE)
ERROR = names.prometheus_label(names.ERROR_TYPE)
USER = vocabulary.USER.label
DEPARTMENT = vocabulary.DEPARTMENT.label
APP = vocabulary.APP.label  # service_name: on our counters in both export paths
CURRENCY = names.CURRENCY

# The dashboard variables each label is filtered by, in the order the variables chain.
VARIABLES = {"service": SERVICE, "model": MODEL, "department": DEPARTMENT, "user": USER}
ALL_FILTERS = tuple(VARIABLES)
SEMCONV_FILTERS = ("service", "model")  # the semconv histograms carry no attribution labels

QUOTA_ALERTS = [*(alert for scope in vocabulary.SCOPES for alert in scope.alerts.values()), *FORECAST_ALERTS.values()]
FIRING_QUOTA_ALERTS = f'ALERTS{{alertstate="firing", alertname=~"{"|".join(QUOTA_ALERTS)}"}}'


def selector(metric: str, *extra: str, filters: tuple[str, ...] = ALL_FILTERS) -> str:
    """`metric{label=~"$variable", ..., extra matchers}`."""
    matchers = [f'{VARIABLES[v]}=~"${v}"' for v in filters] + list(extra)
    return f"{metric}{{{', '.join(matchers)}}}"


def rate(sel: str) -> str:
    return f"rate({sel}[$__rate_interval])"


def increase(sel: str) -> str:
    return f"increase({sel}[$__range])"


def total(expr: str, *by: str) -> str:
    """sum by (labels) (expr), or sum(expr) without labels."""
    return f"sum by ({', '.join(by)}) ({expr})" if by else f"sum({expr})"


def share(part: str, whole: str) -> str:
    """part / whole where a missing part counts as 0 (no errors yet is 0 %, not no data)."""
    return f"({part} or {whole} * 0)\n/ {whole}"


def quantile(q: str, metric: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {MODEL}) ({rate(selector(metric, filters=SEMCONV_FILTERS))}))"


def quota(scope: vocabulary.QuotaScope, kind: str, what: str) -> str:
    """A recorded quota series of the scope, filtered by the scope's variable."""
    variable = next(v for v, label in VARIABLES.items() if label == scope.label)
    return f'{series(scope.name, kind, what)}{{{scope.label}=~"${variable}"}}'


def every_window_ratio(scope: vocabulary.QuotaScope, what: str = "ratio") -> str:
    """Percent of the limit in every window the rules record for the scope, labelled `window` and `quota`: one
    query whatever windows the quota file sets (a window's ratio is llm_quota:user_tokens:day_ratio, the scope's
    own window's has no prefix). `what="forecast_ratio"`: the departments' projections to the window's end."""
    variable = next(v for v, label in VARIABLES.items() if label == scope.label)
    prefix = f"{PREFIX}:{scope.name}_"
    others = "|".join(f"{window}_" for window in WINDOWS if window != scope.window)
    kinds = "|".join(vocabulary.KINDS)
    ratios = f'{{__name__=~"{prefix}({kinds}):({others})?{what}", {scope.label}=~"${variable}"}}'
    quota = f'label_replace({ratios}, "quota", "$1", "__name__", "{prefix}([a-z]+):.*")'
    window = f'label_replace({quota}, "window", "$1", "__name__", "{prefix}[a-z]+:([a-z0-9]+)_{what}")'
    return percent(f'label_replace({window}, "window", "{scope.window}", "window", "")')


def percent(expr: str) -> str:
    return f"100 * {expr}"
