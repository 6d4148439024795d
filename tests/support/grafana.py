"""What the dashboard tests share: the shipped Grafana files loaded, their queries and variables, and a small
PromQL tokenizer that lists the metric and label names an expression uses."""


import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml
from prometheus_client.parser import text_string_to_metric_families

from otel_tokens import names
from otel_tokens.ops.rules import render
from otel_tokens.quota.file import Quotas, load_quotas
from otel_tokens.quota.grants.model import Grant
from otel_tokens.quota.vocabulary import BY_NAME
from tests.support.dashboard_app import OPENAI_MODEL, SERVICE_NAME

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
COLLECTOR = ROOT / "collector"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_FILES = sorted((GRAFANA / "provisioning" / "datasources").glob("*.yaml"))
PROVIDER_FILES = sorted((GRAFANA / "provisioning" / "dashboards").glob("*.yaml"))

# The dashboard JSON schema version each pinned Grafana minor saves (Grafana 12.2 writes 42, the last version of the
# v1 dashboard API). A new pin in docker-compose.yml fails test_schema_version_matches_the_pinned_grafana until the
# dashboards are checked (open, save) in that version and the entry is added here.
GRAFANA_SCHEMA_VERSIONS = {"12.2": 42}
REQUIRED_VARIABLES = ("app", "model", "department", "user")
BUILTIN_DATASOURCE_UIDS = {"-- Grafana --"}
PROMETHEUS_METRICS = {"ALERTS", "up", "target_info"}
PROMETHEUS_LABELS = {"__name__", "job", "instance", "le", "alertname", "alertstate"}
# What Grafana substitutes for its own interval variables; chosen for a 1 s scrape interval and data a few seconds old.
GRAFANA_DURATIONS = {"__rate_interval": "2m", "__interval": "15s", "__range": "1h"}
MODELS = {"tiny-gpt2", "tiny-llama-chat", OPENAI_MODEL}
JOB = "app"  # the scrape job of start_prometheus
APP = SERVICE_NAME  # the dashboard app's service.name: what the app variable lists (service_name on our counters)

# Test quotas: carol (support) goes over her token limit (critical fires), support over its token budget, the
# dashboard app over its token budget (its cost budget stays below the warning).
QUOTAS = {
    "warning_ratio": 0.8,
    "users": {"default": {"tokens": 100_000, "cost": 10}, "overrides": {"carol": {"tokens": 300}}},
    "departments": {"default": {"tokens": 1_000_000, "cost": 100},
                    "overrides": {"support": {"tokens": 200, "cost": 50}}},
    "apps": {"default": {"tokens": 1_000_000, "cost": 100}, "overrides": {APP: {"tokens": 500}}},
}
# Grants in force through the dashboard tests, of both kinds, on principals with usage (a user on the default, a
# department on the default; neither near its limit): the grant panels show them, the limit panels count them.
GRANTED = {"user": ("alice", 50_000, 5.0), "department": ("research", 500_000, 50.0)}


def grants_in_force(now: float) -> list[Grant]:
    """GRANTED as grants of each scope's own window, from two hours before `now` (before any data of a test) for a
    week."""
    return [Grant(f"g-{i:08x}", scope, name, BY_NAME[scope].window, tokens, cost, now - 7200, now + 7 * 86400,
                  "dashboard test", "ops", now) for i, (scope, (name, tokens, cost)) in enumerate(GRANTED.items(), 1)]


# --- loading ---------------------------------------------------------------------------------------------------------
def _dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARD_FILES}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out += panel.get("panels", [])  # collapsed rows
    return out


def _data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in _panels(dashboard) if p.get("type") != "row"]


def _datasources() -> list[dict[str, Any]]:
    return [ds for path in DATASOURCE_FILES for ds in yaml.safe_load(path.read_text())["datasources"]]


def _datasource(kind: str) -> dict[str, Any]:
    (found,) = [ds for ds in _datasources() if ds["type"] == kind]
    return found


def _compose() -> dict[str, Any]:
    return yaml.safe_load((COLLECTOR / "docker-compose.yml").read_text())


def _shipped_quotas() -> Quotas:
    return load_quotas(COLLECTOR / "quotas.yaml")


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every Prometheus query: panel targets, variables, annotations."""
    out = []
    for panel in _data_panels(dashboard):
        for t in panel.get("targets", []):
            out.append((f"{dashboard['title']} / {panel['title']} / {t['refId']}", t["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            out.append((f"{dashboard['title']} / variable {variable['name']}", _variable_query(variable)))
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            out.append((f"{dashboard['title']} / annotation {annotation['name']}", annotation["expr"]))
    return out


def _variable_query(variable: dict[str, Any]) -> str:
    q = variable["query"]
    return q["query"] if isinstance(q, dict) else q


_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.*),\s*)?(?P<label>[A-Za-z_][A-Za-z0-9_]*)\)$", re.S)


def _label_values_parts(definition: str) -> tuple[str | None, str]:
    match = _LABEL_VALUES.match(definition.strip())
    assert match, f"not a label_values() query: {definition}"
    return match["selector"], match["label"]


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


# --- PromQL names ----------------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>\d[\w.]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^(){}\[\],=<>@:])
  | (?P<space>\s+)
""", re.X)
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
                 "quantile"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
             "inf", "nan"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        assert match, f"cannot tokenize {expr[pos:]!r} in {expr!r}"
        pos = match.end()
        if match.lastgroup != "space":
            out.append((match.lastgroup or "", match.group()))
    return out


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression uses: label names from matchers, grouping clauses
    (by / without / on / ignoring / group_left / group_right) and label_replace's destination and source."""
    tokens = _tokens(expr)
    metrics: set[str] = set()
    labels: set[str] = set()
    braces = 0
    calls: list[list[Any]] = []  # [function, paren depth, argument index]
    depth = 0
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if text == "{":
            braces += 1
        elif text == "}":
            braces -= 1
        elif text == "(":
            depth += 1
        elif text == ")":
            if calls and calls[-1][1] == depth:
                calls.pop()
            depth -= 1
        elif text == "," and not braces and calls and calls[-1][1] == depth:  # not a matcher list's comma
            calls[-1][2] += 1
        elif kind == "string" and not braces and calls and calls[-1][1] == depth \
                and calls[-1][0] == "label_replace" and calls[-1][2] in (1, 3):
            labels.add(text[1:-1])
        elif kind == "ident":
            if braces:
                if following in ("=", "!=", "=~", "!~"):
                    labels.add(text)
            elif text in _GROUPING and following == "(":
                end = next(j for j in range(i + 2, len(tokens)) if tokens[j][1] == ")")
                labels |= {t for k, t in tokens[i + 2:end] if k == "ident"}
                i = end
            elif following == "(" and text not in _KEYWORDS:
                calls.append([text, depth + 1, 0])
            elif text not in _AGGREGATIONS and text not in _KEYWORDS:
                metrics.add(text)
        i += 1
    return metrics, labels


def query_names(expr: str) -> tuple[set[str], set[str]]:
    """promql_names, also of a variable's label_values(selector, label): the selector's names and the label."""
    if expr.startswith("label_values("):
        selector, label = _label_values_parts(expr)
        metrics, labels = promql_names(selector or "")
        return metrics, labels | {label}
    return promql_names(expr)


def emitted_metrics() -> set[str]:
    """Prometheus names of the package's instruments, from otel_tokens.names (histograms with their series)."""
    out = set()
    for key, value in vars(names).items():
        if key.startswith("PROM_") and isinstance(value, str):
            out |= {value} if value.endswith("_total") else {value + s for s in ("_bucket", "_sum", "_count")}
    return out


def emitted_labels() -> set[str]:
    """Prometheus label names of the attribute keys in otel_tokens.names."""
    return {names.prometheus_label(v) for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}


def _recording_rules(quotas: Quotas) -> list[dict[str, Any]]:
    """The recording rules, with GRANTED's grants in force (their series are recorded only while one is)."""
    now = time.time()
    return [rule for group in render(quotas, grants=grants_in_force(now), now=now)["groups"]
            for rule in group["rules"] if "record" in rule]


def recorded_series(quotas: Quotas) -> set[str]:
    return {rule["record"] for rule in _recording_rules(quotas)}


def recording_labels(quotas: Quotas) -> set[str]:
    """Labels the recording rules set themselves (a grant's id)."""
    return {label for rule in _recording_rules(quotas) for label in rule.get("labels", {})}


def rule_alerts(quotas: Quotas) -> list[dict[str, Any]]:
    return [rule for group in render(quotas)["groups"] for rule in group["rules"] if "alert" in rule]


_VARIABLE_USE = re.compile(r"\$\{([A-Za-z0-9_.]+)(?::[^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)|\[\[([A-Za-z0-9_]+)\]\]")


def _quota_series_targets() -> Iterator[tuple[str, dict[str, Any], dict[str, Any], set[str]]]:
    for dashboard in _dashboards().values():
        for panel in _data_panels(dashboard):
            for t in panel["targets"]:
                series = {m for m in promql_names(t["expr"])[0] if m.startswith("llm_quota:")}
                if series:
                    yield f"{dashboard['title']} / {panel['title']} / {t['refId']}", panel, t, series


def _quota_targets() -> list[tuple[str, dict[str, Any], dict[str, Any], str]]:
    """(where, panel, target, recorded series) of every target that reads one llm_quota:* series (usage, limit,
    ratio); the headroom targets read two (_headroom_targets)."""
    return [(where, panel, t, series.pop()) for where, panel, t, series in _quota_series_targets()
            if len(series) == 1]


def _headroom_targets() -> list[tuple[str, dict[str, Any], str, str]]:
    """(where, target, limit series, usage series) of every target that reads two llm_quota:* series: a limit and
    the usage of the same principal and kind, nothing else."""
    out = []
    for where, _panel, t, series in _quota_series_targets():
        if len(series) == 1:
            continue
        limits = {s for s in series if s.endswith(":limit")}
        assert len(series) == 2 and len(limits) == 1, (where, series)
        (limit,), (usage,) = limits, series - limits
        assert usage.rsplit(":", 1)[0] == limit.rsplit(":", 1)[0], (where, series)
        out.append((where, t, limit, usage))
    return out


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


# Grafana's Prometheus data source escapes regex characters in a multi-value variable's values.
_REGEX_SPECIAL = re.compile(r"([\\^$*+?.()|{}\[\]])")


def grafana_regex(values: list[str]) -> str:
    escaped = [_REGEX_SPECIAL.sub(r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def interpolate(text: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name in GRAFANA_DURATIONS:
            return GRAFANA_DURATIONS[name]
        assert name in values, f"no value for ${name}"
        return values[name]
    return _VARIABLE_USE.sub(one, text)


def label_values(url: str, definition: str, values: dict[str, str]) -> list[str]:
    """What Grafana's Prometheus data source lists for label_values(selector, label): the label values API with the
    selector as match[] (variables in it interpolated) over the dashboard's time range."""
    selector, label = _label_values_parts(interpolate(definition, values))
    params = {"start": str(time.time() - 6 * 3600), "end": str(time.time())}
    if selector:
        params["match[]"] = selector
    body = _get_json(f"{url}/api/v1/label/{label}/values?{urlencode(params)}")
    assert body["status"] == "success", body
    return sorted(body["data"])


# --- the dashboard test's Prometheus ------------------------------------------------------------------------------
def openmetrics(text: str, extra: dict[str, str], timestamps: list[int]) -> str:
    """The app's accounting counters as OpenMetrics, each sample repeated at `timestamps` (seconds); empty label
    values are dropped as a Prometheus scrape drops them, so the series continue the scraped ones."""
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    lines = []
    wanted = {names.PROM_LLM_TOKEN_USAGE, names.PROM_LLM_COST, names.PROM_LLM_REQUESTS, names.PROM_QUOTA_TOKENS,
              names.PROM_QUOTA_COST}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in wanted:
                continue
            labels = {**{k: v for k, v in sample.labels.items() if v}, **extra}
            selector = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items()))
            lines += [f"{sample.name}{{{selector}}} {sample.value!r} {t}" for t in timestamps]
    return "\n".join([*lines, "# EOF", ""])

