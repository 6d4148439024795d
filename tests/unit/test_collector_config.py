"""The shipped backend configuration in collector/, checked by every means that runs here.

No Docker engine, collector binary or Grafana exists on the test machines, so: the collector config is
checked structurally (pipelines, component names of the pinned distribution, the content-dropping
regex against the package's own attribute names), the compose file for pins and port agreement, and
everything Prometheus / Alertmanager with the real Debian binaries (promtool 2.42, amtool 0.25: the
versions docker-compose.yml pins). Metric and label names are taken from otel_tokens.names.

The Prometheus binaries are required: under CI (CI=true) a missing one fails the test, elsewhere it is
skipped (`make system-deps` installs them).
"""

from __future__ import annotations

import math
import re
import string
from pathlib import Path
from typing import Any

import yaml

from otel_tokens import names
from otel_tokens.ops.forecast_rules import ALERTS as FORECAST_ALERTS
from otel_tokens.quota import vocabulary
from tests.support.collector_files import (
    AM_EXAMPLE_ENV,
    COLLECTOR,
    CONTRIB_VERSION,
    REQUIRED_SECRETS,
    ROOT,
    RULES,
    _am_template,
    _compose,
    _host,
    _load,
    _otelcol,
    _prometheus,
    _rule_files,
)

COMPONENT_TYPES: dict[str, frozenset[str]] = {
    "receivers": frozenset({
        "otlp", "prometheus", "hostmetrics", "filelog", "jaeger", "zipkin", "kafka", "nop",
    }),
    "processors": frozenset({
        "batch", "memory_limiter", "transform", "attributes", "filter", "resource", "redaction",
        "resourcedetection", "k8sattributes", "tail_sampling", "probabilistic_sampler", "groupbyattrs",
        "cumulativetodelta", "deltatocumulative", "metricstransform",
    }),
    "exporters": frozenset({
        "otlp", "otlphttp", "debug", "nop", "prometheus", "prometheusremotewrite", "file", "kafka",
    }),
    "connectors": frozenset({"forward", "spanmetrics", "count", "routing"}),
    "extensions": frozenset({"health_check", "pprof", "zpages", "basicauth", "bearertokenauth", "file_storage"}),
}


CONTENT_KEYS = (
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.prompt",
    "gen_ai.completion", "gen_ai.prompt.0.content", "gen_ai.completion.0.content", "gen_ai.prompt.1.role",
    "gen_ai.tool.call.arguments", "gen_ai.tool.call.result", "llm.prompts", "llm.completions",
    "llm.input_messages.0.message.content", "input.value", "output.value",
)


LEGACY_ACCOUNTING_KEYS = (
    "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens", "llm.usage.total_tokens",
    "gen_ai.system", "gen_ai.request.max_tokens", "gen_ai.response.finish_reasons", "gen_ai.response.id",
)


KEEP_CONTENT_GUARD = '"${env:OTEL_TOKENS_COLLECTOR_KEEP_CONTENT:-false}" != "true"'


AM_PLACEHOLDERS = frozenset({
    "SMTP_SMARTHOST", "SMTP_FROM", "SMTP_AUTH_USERNAME", "SMTP_AUTH_PASSWORD", "SMTP_REQUIRE_TLS",
    "ALERT_EMAIL_TO", "ALERT_WEBHOOK_URL", "GUARD_URL", "GUARD_TOKEN_FILE",
})


BUDGET_LIMIT_S = 90.0


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _seconds(duration: str | int | float | None) -> float:
    """A Prometheus / Go duration (`15s`, `1m30s`, `500ms`) in seconds; None is 0."""
    if duration is None:
        return 0.0
    if isinstance(duration, (int, float)):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|[smhdwy])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (relative to collector/) of a compose service's bind mounts."""
    out = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        out[target] = source
    return out


def _rules() -> list[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """(file, group, rule) for every rule of every file Prometheus loads."""
    out = []
    for path in _rule_files():
        for group in (_load(path) or {}).get("groups", []):
            for rule in group.get("rules", []):
                out.append((path, group, rule))
    return out


def test_otelcol_pipelines_reference_defined_components_and_use_all_of_them() -> None:
    config = _otelcol()
    service = config["service"]
    used: dict[str, set[str]] = {kind: set() for kind in ("receivers", "processors", "exporters")}
    assert service["pipelines"], "no pipeline"
    for pipeline_id, pipeline in service["pipelines"].items():
        assert pipeline_id.split("/")[0] in {"traces", "metrics", "logs"}, pipeline_id
        for kind in used:
            for component in pipeline.get(kind, []):
                assert component in (config.get(kind) or {}), f"{pipeline_id} uses undefined {kind} {component}"
                used[kind].add(component)
        assert pipeline["receivers"] and pipeline["exporters"], pipeline_id
        processors = pipeline.get("processors", [])
        assert processors[0] == "memory_limiter", f"{pipeline_id}: memory_limiter must come first"
        assert processors[-1] == "batch", f"{pipeline_id}: batch must come last"
    for kind, ids in used.items():
        assert set(config.get(kind) or {}) == ids, f"defined but unused {kind}: {set(config[kind]) - ids}"
    assert set(config.get("extensions") or {}) == set(service.get("extensions") or []), "unused extensions"
    assert not config.get("connectors"), "connectors would need the both-sides check: none expected"


def test_otelcol_component_types_exist_in_the_pinned_contrib_version() -> None:
    config = _otelcol()
    for kind, valid in COMPONENT_TYPES.items():
        for component_id in config.get(kind) or {}:
            component_type = component_id.split("/")[0]
            assert component_type in valid, f"{kind}: {component_type!r} is not in otelcol-contrib {CONTRIB_VERSION}"


def test_otelcol_endpoints() -> None:
    config = _otelcol()
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    assert _host(config["exporters"]["prometheus"]["endpoint"]) == "0.0.0.0"
    # default translation (suffixes on, braced units dropped) gives the names in otel_tokens.names
    prom = config["exporters"]["prometheus"]
    assert not {"add_metric_suffixes", "translation_strategy", "namespace"} & set(prom), prom
    assert not prom.get("resource_to_telemetry_conversion", {}).get("enabled"), "every resource attribute as label"
    metrics = config["service"]["pipelines"]["metrics"]
    assert "prometheus" in metrics["exporters"]
    statements = [s for group in config["processors"]["transform/service_name_label"]["metric_statements"]
                  for s in group["statements"]]
    assert any('set(attributes["service.name"], resource.attributes["service.name"])' in s for s in statements)
    assert "transform/service_name_label" in metrics["processors"]


def _content_statements() -> list[str]:
    processor = _otelcol()["processors"]["transform/drop_genai_content"]
    return [s for key in ("trace_statements", "log_statements") for group in processor[key]
            for s in group["statements"]]


def test_content_is_dropped_from_spans_span_events_and_logs_unless_opted_in() -> None:
    config = _otelcol()
    processor = config["processors"]["transform/drop_genai_content"]
    assert {g["context"] for g in processor["trace_statements"]} == {"span", "spanevent"}
    assert {g["context"] for g in processor["log_statements"]} == {"log"}
    for statement in _content_statements():
        assert statement.split(" where ", 1)[1].startswith(KEEP_CONTENT_GUARD), statement
        # the only dollar signs are the collector's env expansion; no backslash escaping to get wrong
        assert statement.count("$") == 1 and "\\" not in statement, statement
    for pipeline_id in ("traces", "logs"):
        assert "transform/drop_genai_content" in config["service"]["pipelines"][pipeline_id]["processors"]
    environment = _compose()["services"]["collector"]["environment"]
    assert environment["OTEL_TOKENS_COLLECTOR_KEEP_CONTENT"] == "${OTEL_TOKENS_COLLECTOR_KEEP_CONTENT:-false}"


def test_content_regex_matches_content_keys_and_no_accounting_attribute() -> None:
    patterns = {m for s in _content_statements() for m in re.findall(r'delete_matching_keys\(\w+, "([^"]+)"\)', s)}
    assert len(patterns) == 1, patterns  # spans, span events and logs drop the same keys
    pattern = re.compile(patterns.pop())  # Go RE2 syntax; this pattern is also valid Python
    for key in CONTENT_KEYS:
        assert pattern.search(key), f"content key {key} is not dropped"
    ours = [v for k, v in vars(names).items() if k.isupper() and isinstance(v, str) and "." in v
            and v not in names.CONTENT_ATTRIBUTES]
    assert names.GEN_AI_USAGE_INPUT_TOKENS in ours and names.USER_ID in ours
    for key in names.CONTENT_ATTRIBUTES:  # our own opt-in content is dropped too, unless kept explicitly
        assert pattern.search(key), f"content key {key} is not dropped"
    for key in (*ours, *LEGACY_ACCOUNTING_KEYS):
        assert not pattern.search(key), f"{key} would be deleted"


def test_compose_variables_have_defaults_and_are_documented() -> None:
    text = (COLLECTOR / "docker-compose.yml").read_text().replace("$$", "")
    variables = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:[-?])?[^}]*\}", text)
    required = {name for name, default in variables if default == ":?"}
    assert required == REQUIRED_SECRETS, "a secret has no default: compose refuses to start without it"
    assert variables and all(default == ":-" for name, default in variables if name not in required), \
        "every other variable needs a :- default"
    from otel_tokens.ops.stack_secrets import ENV_SECRETS

    assert set(ENV_SECRETS) == REQUIRED_SECRETS  # `otel-tokens stack-secrets` makes each of them
    example = {line.split("=", 1)[0] for line in (COLLECTOR / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert {name for name, _ in variables} == example
    assert AM_PLACEHOLDERS <= set(_compose()["services"]["alertmanager"]["environment"])


def test_compose_mounts_match_the_paths_the_configs_use() -> None:
    services = _compose()["services"]
    collector = services["collector"]
    config_flag = next(a for a in collector["command"] if a.startswith("--config="))
    assert _mounts(collector)[config_flag.split("=", 1)[1]] == "./otelcol.yaml"

    prometheus = services["prometheus"]
    flags = dict(a.split("=", 1) for a in prometheus["command"] if "=" in a)
    mounts = _mounts(prometheus)
    assert mounts[flags["--config.file"]] == "./prometheus.yml"
    assert "--web.enable-lifecycle" in prometheus["command"]  # POST /-/reload after `otel-tokens rules`
    # calendar-month budgets, previous_month's 62 d subquery, and last month's statement held whole
    assert _seconds(flags["--storage.tsdb.retention.time"]) > 62 * 86400
    (rule_glob,) = _prometheus()["rule_files"]
    assert mounts[str(Path(rule_glob).parent)] == "./rules" and Path(rule_glob).name == "*.yml"

    alertmanager = services["alertmanager"]
    script = alertmanager["command"][0]
    template = re.search(r"AM_TEMPLATE:-([^}]+)\}", script)
    assert template and _mounts(alertmanager)[template.group(1)] == "./alertmanager.yml"
    assert "/alertmanager" in _mounts(alertmanager)

    grafana = _mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == "../grafana/provisioning"
    assert grafana["/var/lib/grafana/dashboards"] == "../grafana/dashboards"
    from otel_tokens.ops.stack_secrets import PASSWORD_FILE, WEB_CONFIG

    made = {PASSWORD_FILE, WEB_CONFIG}  # what `otel-tokens stack-secrets` writes to ./secrets
    for name, service in services.items():
        for target, source in _mounts(service).items():
            if source == "./secrets":
                text = yaml.safe_dump(service) + (COLLECTOR / "prometheus.yml").read_text() * (name == "prometheus")
                used = set(re.findall(re.escape(target) + r"/([A-Za-z0-9_.-]+)", text))
                assert used <= made, f"{name} reads {used - made} from ./secrets, which nothing makes"
            elif source.startswith("./"):
                assert (COLLECTOR / source).exists(), f"{name}: {source} -> {target} is missing"


def test_static_rules_group_and_alerts() -> None:
    groups = {g["name"]: g for g in _load(RULES / "static.yml")["groups"]}
    alerts = {r["alert"]: r for r in groups["otel_tokens_static"]["rules"]}
    assert set(alerts) == {"LLMUsageSpike", "LLMTelemetryAbsent", "LLMHighErrorRatio"}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] == "warning", name
        assert {"summary", "description"} <= set(rule["annotations"]), name


def test_alertmanager_template_placeholders() -> None:
    text = _am_template()
    placeholders = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    assert placeholders == AM_PLACEHOLDERS
    assert text.count("$") == len(re.findall(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", text)), "a stray dollar sign"
    config = _load(COLLECTOR / "alertmanager.yml")  # the template itself is valid YAML
    assert config["global"]["smtp_require_tls"] == "${SMTP_REQUIRE_TLS}"


def test_alertmanager_grouping_and_inhibition() -> None:
    config = yaml.safe_load(string.Template(_am_template()).substitute(AM_EXAMPLE_ENV))
    assert config["route"]["group_by"] == ["alertname", "user_id", "department", "service_name", "window"]
    assert _seconds(config["route"]["group_wait"]) <= 10
    receivers = {r["name"]: r for r in config["receivers"]}
    # the guard: its own route, first, continue, a short repeat (a restarted guard or a forged
    # 'resolved' is corrected within a minute) while the people's routes keep the root's 4h
    guard, *others = config["route"]["routes"]
    assert guard["receiver"] == "guard" and guard["continue"] is True and _seconds(guard["repeat_interval"]) <= 60
    (matcher,) = guard["matchers"]  # every scope's quota alerts reach the guard, and nothing else
    pattern = re.fullmatch(r'alertname=~"(.*)"', matcher).group(1)  # type: ignore[union-attr]
    assert {a for a in vocabulary.ALERTS if re.fullmatch(pattern, a)} == set(vocabulary.ALERTS)
    assert not [a for a in FORECAST_ALERTS.values() if re.fullmatch(pattern, a)]
    assert all("repeat_interval" not in r for r in others) and _seconds(config["route"]["repeat_interval"]) >= 3600
    (hook,) = receivers["guard"]["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:9095/alertmanager" and hook["send_resolved"] is True
    assert hook["http_config"]["authorization"] == {"type": "Bearer",
                                                    "credentials_file": "/etc/alertmanager/guard-token"}
    assert set(receivers["critical"]) == {"name", "email_configs", "webhook_configs"}
    assert set(receivers["warning"]) == {"name", "webhook_configs"}
    inhibit, forecast, app_forecast = config["inhibit_rules"]
    # one app's (or user's, department's) critical never mutes another's warning: every scope's label is equal
    assert inhibit == {"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
                       "equal": ["alertname", *(scope.label for scope in vocabulary.SCOPES), "window"]}
    # a department's budget forecast is muted by that department's budget critical of the same kind and window
    assert forecast == {"source_matchers": ['alertname=~"LLMDepartment(Token|Cost)Budget"', 'severity="critical"'],
                        "target_matchers": ['alertname="LLMDepartmentBudgetForecast"'],
                        "equal": ["department", "quota", "window"]}
    assert app_forecast == {"source_matchers": ['alertname=~"LLMApp(Token|Cost)Budget"', 'severity="critical"'],
                            "target_matchers": ['alertname="LLMAppBudgetForecast"'],
                            "equal": ["service_name", "quota", "window"]}


_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')


_MATCHERS = re.compile(r"\{([^{}]*)\}")


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")


_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) used by a PromQL expression: label names from matchers and from
    by / without / on / ignoring / group_left / group_right; metric names are the remaining identifiers
    of our namespaces (llm*, gen_ai*)."""
    expr = _STRING.sub('""', expr)
    labels: set[str] = set()
    for block in _MATCHERS.findall(expr):
        labels |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", block))
    expr = _MATCHERS.sub(" ", expr)
    for block in _GROUPING.findall(expr):
        labels |= {label.strip() for label in block.split(",") if label.strip()}
    expr = _GROUPING.sub(" ", expr)
    metrics = {t for t in _IDENTIFIER.findall(expr) if re.match(r"(llm|gen_ai)[_:]", t)}
    return metrics, labels


def _emitted_metrics() -> set[str]:
    counters = {names.PROM_LLM_TOKEN_USAGE, names.PROM_LLM_COST, names.PROM_LLM_REQUESTS, names.PROM_QUOTA_TOKENS,
                names.PROM_QUOTA_COST}
    histograms = {names.PROM_TOKEN_USAGE, names.PROM_OPERATION_DURATION, names.PROM_TIME_TO_FIRST_CHUNK}
    assert all(c.endswith("_total") for c in counters)
    return counters | {h + suffix for h in histograms for suffix in ("_bucket", "_sum", "_count")}


ALLOWED_LABELS = {
    *(names.prometheus_label(a) for a in (
        names.USER_ID, names.DEPARTMENT, names.GEN_AI_OPERATION_NAME, names.GEN_AI_PROVIDER_NAME,
        names.GEN_AI_REQUEST_MODEL, names.GEN_AI_TOKEN_TYPE, names.LLM_USAGE_SOURCE, names.ERROR_TYPE,
        names.CURRENCY)),
    "job", "instance", "service_name", "window", "severity", "le",
    "month",  # made by the month rollup itself (count_values), never read from a series
    "part",  # made by the rolling window's parts rule (label_replace), read back by the window
    "term",  # made by the rolling window itself (label_replace) to add its terms, never read from a series
}


def test_promql_name_extraction() -> None:
    metrics, labels = _promql_names(
        'sum by (user_id) (increase(llm_cost_total{department!="x", gen_ai_token_type="input"}[1h] offset 1d))'
        ' / on(user_id) group_left(window) llm_quota:user_cost:limit > 0.8'
        ' and histogram_quantile(0.9, sum by (le) (rate(gen_ai_client_token_usage_bucket[5m])))')
    assert metrics == {"llm_cost_total", "llm_quota:user_cost:limit", "gen_ai_client_token_usage_bucket"}
    assert labels == {"user_id", "department", "gen_ai_token_type", "window", "le"}


def test_rules_use_only_emitted_metrics_and_known_labels() -> None:
    recorded = {rule["record"] for _, _, rule in _rules() if "record" in rule}
    assert not recorded & _emitted_metrics()
    allowed_metrics = _emitted_metrics() | recorded
    used_metrics: set[str] = set()
    for path, _, rule in _rules():
        metrics, labels = _promql_names(str(rule["expr"]))
        used_metrics |= metrics
        name = f"{path.name}: {rule.get('alert') or rule.get('record')}"
        assert metrics <= allowed_metrics, f"{name} uses {metrics - allowed_metrics}"
        unknown = {label for label in labels if label not in ALLOWED_LABELS and not label.startswith("gen_ai_")}
        assert not unknown, f"{name} uses labels {unknown}"
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, name
    assert {names.PROM_QUOTA_TOKENS, names.PROM_QUOTA_COST, names.PROM_LLM_REQUESTS} <= used_metrics


def test_worst_case_alert_delay_is_within_budget() -> None:
    header = (COLLECTOR / "prometheus.yml").read_text()
    documented_interval = re.findall(r"OTEL_METRIC_EXPORT_INTERVAL=(\d+)", header)
    compose_interval = re.findall(r"OTEL_METRIC_EXPORT_INTERVAL=(\d+)", (COLLECTOR / "docker-compose.yml").read_text())
    assert documented_interval and set(documented_interval) == set(compose_interval), "assumption documented twice"
    app_export = int(documented_interval[0]) / 1000

    batch_timeout = _seconds(_otelcol()["processors"]["batch"]["timeout"])
    prometheus = _prometheus()
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    scrape = _seconds(jobs["otel-collector"].get("scrape_interval", prometheus["global"]["scrape_interval"]))
    global_eval = _seconds(prometheus["global"]["evaluation_interval"])
    # the first-level rollups run slower, off the crossing path: a user's crossing is read from raw data
    # by the group that holds the alerts (otel_tokens/ops/rollups.py: the window's parts as of the last
    # boundary, plus each raw series' growth since); a department's month counts completed hours anyway;
    # and its month to date is computed in the same evaluation as the hourly buckets it sums (it changes only
    # then: no delay); what else the slow groups record (a department's closed month, a user's limit for
    # dashboards and alert texts: the ratio divides by the limit values) no rule reads
    slow = ("_rollups", "_parts")  # the window's parts have a group of their own, every 5 minutes
    rollups = [r for _, g, r in _rules() if g["name"].endswith(slow)]
    assert rollups and all("record" in r for r in rollups)
    second_level = {r["record"] for r in rollups if "llm_quota:" in r["expr"]}
    parts = {"llm_quota:user_tokens:24h_parts", "llm_quota:user_cost:24h_parts"}
    months = {f"llm_quota:{scope}_{kind}:month" for scope in ("department", "app") for kind in ("tokens", "cost")}
    previous = {m.replace(":month", ":previous_month") for m in months}
    assert second_level == {*previous, "llm_quota:user_tokens:limit", "llm_quota:user_cost:limit", *parts, *months}
    hours = [r["record"] for _, g, r in _rules() if g["name"] == "llm_quota_department_rollups"]
    buckets = ["llm_quota:department_tokens:1h", "llm_quota:department_cost:1h"]
    assert hours[:4] == [*buckets, "llm_quota:department_tokens:month", "llm_quota:department_cost:month"]  # the
    # buckets, then their sums
    assert not [r for _, _, r in _rules()
                if any(re.search(re.escape(name) + r"(?![\w:])", r["expr"]) for name in second_level - parts - months)]
    for _, _, rule in _rules():
        if rule.get("record") not in parts and any(name in rule["expr"] for name in parts):
            # the window (the only other reader) adds what each raw series grew by since the parts' boundary
            raw = re.findall(r"last_over_time\((llm_quota_\w+)\{", rule["expr"])
            assert rule["record"].endswith(":24h") and raw and set(raw) <= {names.PROM_QUOTA_TOKENS,
                                                                             names.PROM_QUOTA_COST}, rule["record"]
    evaluation = max([global_eval, *(_seconds(g.get("interval", global_eval)) for _, g, _ in _rules()
                                     if not g["name"].endswith(slow))])
    ordering = evaluation  # a recording rule in another group may be evaluated after the alert reading it
    # the budget forecast is a projection days ahead, not a crossing: its 30 m `for` is outside the budget
    largest_for = max(_seconds(r.get("for")) for _, _, r in _rules()
                      if "alert" in r and r["alert"] not in FORECAST_ALERTS.values())
    for_delay = math.ceil(largest_for / evaluation) * evaluation  # `for` is checked at evaluations only

    am = yaml.safe_load(string.Template(_am_template()).substitute(AM_EXAMPLE_ENV))["route"]
    routes = [am, *am.get("routes", [])]
    grouping = max(_seconds(r.get(key, am[key])) for r in routes for key in ("group_wait", "group_interval"))

    total = app_export + batch_timeout + scrape + evaluation + ordering + for_delay + grouping
    documented_total = re.search(r"worst case total: (\d+)s", header)
    assert documented_total and float(documented_total.group(1)) == total, (
        f"prometheus.yml documents {documented_total and documented_total.group(1)}s, the files add up to {total}s")
    assert total <= BUDGET_LIMIT_S


PUBLISH = "${OTEL_TOKENS_PUBLISH_ADDRESS:-127.0.0.1}"


def test_compose_publishes_nothing_beyond_loopback_without_auth() -> None:
    """Every port is bound to 127.0.0.1, except on OTEL_TOKENS_PUBLISH_ADDRESS the services that
    authenticate every request, each checked here for its authentication."""
    services, otelcol = _compose()["services"], _otelcol()
    opened = set()
    for name, service in services.items():
        for entry in service.get("ports", []):
            host = str(entry).rsplit(":", 2)[0]
            assert host in ("127.0.0.1", PUBLISH), f"{name} publishes {entry} beyond loopback"
            if host == PUBLISH:
                opened.add(f"{name}:{str(entry).rsplit(':', 1)[1]}")
    assert opened == {"collector:4317", "collector:4318", "guard:9095", "grafana:3000", "redis:6379"}
    # OTLP: both receivers need the bearer token, whose value compose requires
    for protocol in ("grpc", "http"):
        assert otelcol["receivers"]["otlp"]["protocols"][protocol]["auth"] == {"authenticator": "bearertokenauth"}
    assert "bearertokenauth" in otelcol["service"]["extensions"]
    assert otelcol["extensions"]["bearertokenauth"]["token"] == "${env:OTEL_TOKENS_OTLP_TOKEN}"
    assert services["collector"]["environment"]["OTEL_TOKENS_OTLP_TOKEN"].startswith("${OTEL_TOKENS_OTLP_TOKEN:?")
    # the guard refuses to listen beyond loopback without its token, which compose requires
    assert "--listen 0.0.0.0:9095" in " ".join(services["guard"]["command"])
    assert services["guard"]["environment"]["OTEL_TOKENS_GUARD_TOKEN"].startswith("${OTEL_TOKENS_GUARD_TOKEN:?")
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")  # no admin/admin
    assert "requirepass" in services["redis"]["command"][0]
    assert services["redis"]["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    # loopback-only, and basic auth all the same
    assert "--web.config.file=/etc/prometheus/secrets/web.yml" in services["prometheus"]["command"]
    assert "--web.config.file=/etc/alertmanager/secrets/web.yml" in services["alertmanager"]["command"][0]
    # their clients send the password: Prometheus itself (Alertmanager, self-scrape), Grafana, guard, digest
    prometheus = _prometheus()
    auth = {"username": "otel-tokens", "password_file": "/etc/prometheus/secrets/prometheus-password"}
    assert [am["basic_auth"] for am in prometheus["alerting"]["alertmanagers"]] == [auth]
    assert next(j for j in prometheus["scrape_configs"] if j["job_name"] == "prometheus")["basic_auth"] == auth
    datasources = {d["uid"]: d for d in _load(ROOT / "grafana/provisioning/datasources/otel-tokens.yaml")
                   ["datasources"]}
    for uid in ("prometheus", "alertmanager"):
        assert datasources[uid]["basicAuth"] is True and datasources[uid]["basicAuthUser"] == "otel-tokens"
        assert datasources[uid]["secureJsonData"]["basicAuthPassword"] == \
            "$__file{/etc/grafana/secrets/prometheus-password}"
    for name in ("guard", "digest"):
        environment = services[name]["environment"]
        assert environment["OTEL_TOKENS_PROMETHEUS_USER"] == "otel-tokens"
        assert _mounts(services[name])[str(Path(environment["OTEL_TOKENS_PROMETHEUS_PASSWORD_FILE"]).parent)] \
            == "./secrets"
