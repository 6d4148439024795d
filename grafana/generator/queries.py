"""PromQL of the dashboards, spelled from otel_tokens.names and the rule renderer's series names, never retyped."""

from otel_tokens import names
from otel_tokens.ops.forecast_rules import ALERTS as FORECAST_ALERTS
from otel_tokens.ops.rules import PREFIX, series
from otel_tokens.quota import vocabulary
from otel_tokens.quota.calendar import WINDOWS

MODEL = names.prometheus_label(names.GEN_AI_REQUEST_MODEL)
TOKEN_TYPE = names.prometheus_label(names.GEN_AI_TOKEN_TYPE)
SOURCE = names.prometheus_label(names.LLM_USAGE_SOURCE)
ERROR = names.prometheus_label(names.ERROR_TYPE)
USER = vocabulary.USER.label
DEPARTMENT = vocabulary.DEPARTMENT.label
APP = vocabulary.APP.label  # service_name: on our counters in both export paths
CURRENCY = names.CURRENCY

# The dashboard variables each label is filtered by, in the order the variables chain. The app variable reads
# service_name, not job: our counters carry it on both export paths, while job is the service.name only through
# the collector (a direct scrape's job is the scrape job, the same for every app a job scrapes).
VARIABLES = {"app": APP, "model": MODEL, "department": DEPARTMENT, "user": USER}
ALL_FILTERS = tuple(VARIABLES)
SEMCONV_FILTERS = ("app", "model")  # the semconv histograms carry no attribution labels
# The semconv histograms and llm_guard_decisions_total carry service_name only through the collector (its
# transform copies the resource's onto every point); scraped from the SDK's exporter they have none. Their app
# matcher also matches the empty label, `service_name=~"$app|"`, so choosing an app never empties their panels:
# through the collector it narrows them to the app (no point there lacks the label), on direct scrape they show
# every app. The plain `=~"$app"` would show nothing there, and a join on target_info would drop them wherever
# target_info is not exported.
APP_OR_UNLABELLED = "|"

QUOTA_ALERTS = [*(alert for scope in vocabulary.SCOPES for alert in scope.alerts.values()), *FORECAST_ALERTS.values()]
FIRING_QUOTA_ALERTS = f'ALERTS{{alertstate="firing", alertname=~"{"|".join(QUOTA_ALERTS)}"}}'


def selector(metric: str, *extra: str, filters: tuple[str, ...] = ALL_FILTERS, app_optional: bool = False) -> str:
    """`metric{label=~"$variable", ..., extra matchers}`; `app_optional` for a metric that may lack service_name."""
    optional = {"app": APP_OR_UNLABELLED} if app_optional else {}
    matchers = [f'{VARIABLES[v]}=~"${v}{optional.get(v, "")}"' for v in filters] + list(extra)
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
    return f"histogram_quantile({q}, sum by (le, {MODEL}) ({rate(semconv(metric))}))"


def semconv(metric: str) -> str:
    """A semconv histogram's series, filtered by the variables that apply to it."""
    return selector(metric, filters=SEMCONV_FILTERS, app_optional=True)


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


def in_range(metric: str, *by: str, extra: tuple[str, ...] = ()) -> str:
    """The metric's increase over the dashboard's range, summed by `by`."""
    return total(increase(selector(metric, *extra)), *by)


GRANT = "grant"  # the label of a grant's recorded series: the grant's id (otel_tokens.ops.grant_rules)


def granted(what: str, kinds: tuple[str, ...] = vocabulary.KINDS) -> str:
    """The grants' recorded series of every scope and window (`grant`: each grant in force, its amount;
    `limit_granted`: a principal's limit with its grants), labelled `window` and `quota` as every_window_ratio's,
    without the metric name (a table's queries merge on equal labels). One selector for the three scopes: each
    series carries only its own scope's label, so each matcher also matches the label's absence (`$user|`): a
    grant is filtered by its own scope's variable alone."""
    scopes = "|".join(scope.name for scope in vocabulary.SCOPES)
    windows = "|".join(WINDOWS)
    variable = {label: name for name, label in VARIABLES.items()}
    filters = ", ".join(f'{scope.label}=~"${variable[scope.label]}|"' for scope in vocabulary.SCOPES)
    expr = (f'{{__name__=~"{PREFIX}:({scopes})_({"|".join(kinds)}):({"|".join(f"{w}_" for w in WINDOWS)})?{what}", '
            f"{filters}}}")
    expr = f'label_replace({expr}, "quota", "$1", "__name__", "{PREFIX}:[a-z]+_([a-z]+):.*")'
    expr = f'label_replace({expr}, "window", "$1", "__name__", "{PREFIX}:[a-z]+_[a-z]+:({windows})_{what}")'
    for own in dict.fromkeys(scope.window for scope in vocabulary.SCOPES):  # each scope's own window: no prefix
        names = "|".join(scope.name for scope in vocabulary.SCOPES if scope.window == own)
        expr = f'label_replace({expr}, "window", "{own}", "__name__", "{PREFIX}:({names})_[a-z]+:{what}")'
    return f'label_replace({expr}, "__name__", "", "__name__", ".*")'


def granted_limit(grants: str) -> str:
    """Beside each grant (a row of `granted("grant")`), its principal's limit in that window with every grant in
    force."""
    on = ", ".join([*(scope.label for scope in vocabulary.SCOPES), "window", "quota"])
    return f"{grants} * 0\n+ on({on}) group_left()\n{granted('limit_granted')}"
