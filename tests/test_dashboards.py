"""The Grafana dashboards and provisioning in grafana/.

Structure (valid JSON, ids, layout, data sources, variables, units), names (every metric and label is one the package
emits, a recorded llm_quota:* series of the rendered rules, or Prometheus's own) and, against a real Prometheus that
scraped tests/support/dashboard_app.py (the real package: several users, departments, two tiny transformers models, an
OpenAI-style model with estimated counts, streams and errors), every query of every panel, variable and annotation
with its variables substituted the way Grafana does. The quota panels are compared with the limits of a quota file
rendered by otel_tokens.ops.rules.render_text and loaded into that Prometheus.

Department month-to-date is built from hourly buckets aligned to the hour, which a Prometheus started seconds ago
cannot have: the app's first round of metrics is backfilled into the past hour (`promtool tsdb create-blocks-from
openmetrics`, the app's own exposition re-timestamped) and the rule file's hourly bucket rules are evaluated over it
with `promtool tsdb create-blocks-from rules`; the month and ratio series are then recorded live by Prometheus.
"""

from __future__ import annotations

import calendar
import json
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from otel_tokens import names
from otel_tokens.ops.rules import render, render_text
from otel_tokens.quotas import Quotas, load_quotas, parse_quotas
from tests.support.binaries import require_binary
from tests.support.dashboard_app import OPENAI_MODEL, USERS
from tests.support.prometheus_stack import free_port, query, start_prometheus

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
COLLECTOR = ROOT / "collector"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_FILES = sorted((GRAFANA / "provisioning" / "datasources").glob("*.yaml"))
PROVIDER_FILES = sorted((GRAFANA / "provisioning" / "dashboards").glob("*.yaml"))

# The dashboard JSON schema version each pinned Grafana minor saves (Grafana 12.2 writes 42, the last version of the
# v1 dashboard API). A new pin in docker-compose.yml fails test_schema_version_matches_the_pinned_grafana until the
# dashboards are checked (open, save) in that version and the entry is added here.
GRAFANA_SCHEMA_VERSIONS = {"12.2": 42}
REQUIRED_VARIABLES = ("service", "model", "department", "user")
BUILTIN_DATASOURCE_UIDS = {"-- Grafana --"}
PROMETHEUS_METRICS = {"ALERTS", "up", "target_info"}
PROMETHEUS_LABELS = {"__name__", "job", "instance", "le", "alertname", "alertstate"}
# What Grafana substitutes for its own interval variables; chosen for a 1 s scrape interval and data a few seconds old.
GRAFANA_DURATIONS = {"__rate_interval": "2m", "__interval": "15s", "__range": "1h"}
MODELS = {"tiny-gpt2", "tiny-llama-chat", OPENAI_MODEL}
JOB = "app"  # the scrape job of start_prometheus: what the service variable lists when an app is scraped directly

# Test quotas: carol (support) goes over her token limit (critical fires), support over its token budget.
QUOTAS = {
    "warning_ratio": 0.8,
    "users": {"default": {"tokens": 100_000, "cost": 10}, "overrides": {"carol": {"tokens": 300}}},
    "departments": {"default": {"tokens": 1_000_000, "cost": 100},
                    "overrides": {"support": {"tokens": 200, "cost": 50}}},
}


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
        elif text == "," and calls and calls[-1][1] == depth:
            calls[-1][2] += 1
        elif kind == "string" and calls and calls[-1][1] == depth and calls[-1][0] == "label_replace" \
                and calls[-1][2] in (1, 3):
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


def test_promql_name_extraction() -> None:
    metrics, labels = promql_names(
        'label_replace(sum by (gen_ai_request_model, error_type) (rate(llm_requests_total{job=~"$service", '
        'user_id=~"${user}"}[$__rate_interval])), "error_type", "ok", "error_type", "")'
        ' / on(user_id) group_left(window) llm_quota:user_cost:limit > 0.8 and 100 * llm_quota:x:ratio'
        ' or histogram_quantile(0.9, sum by (le) (rate(gen_ai_client_token_usage_bucket[5m]))) @ end()')
    assert metrics == {"llm_requests_total", "llm_quota:user_cost:limit", "llm_quota:x:ratio",
                       "gen_ai_client_token_usage_bucket"}
    assert labels == {"gen_ai_request_model", "error_type", "job", "user_id", "window", "le"}


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


def recorded_series(quotas: Quotas) -> set[str]:
    return {rule["record"] for group in render(quotas)["groups"] for rule in group["rules"] if "record" in rule}


def rule_alerts(quotas: Quotas) -> list[dict[str, Any]]:
    return [rule for group in render(quotas)["groups"] for rule in group["rules"] if "alert" in rule]


# --- structure -------------------------------------------------------------------------------------------------------
def test_grafana_files_exist_and_parse() -> None:
    assert len(DASHBOARD_FILES) == 3, DASHBOARD_FILES
    assert DATASOURCE_FILES and PROVIDER_FILES
    uids = [d["uid"] for d in _dashboards().values()]
    assert len(uids) == len(set(uids)), uids
    for dashboard in _dashboards().values():
        assert dashboard["id"] is None, "provisioned dashboards carry no database id"
        assert dashboard["title"] and "otel-tokens" in dashboard["tags"]


def test_schema_version_matches_the_pinned_grafana() -> None:
    image = _compose()["services"]["grafana"]["image"]
    tag = image.rsplit(":", 1)[1]
    minor = ".".join(tag.split(".")[:2])
    assert minor in GRAFANA_SCHEMA_VERSIONS, f"{image}: which schemaVersion does it save? add it after checking"
    for name, dashboard in _dashboards().items():
        assert dashboard["schemaVersion"] == GRAFANA_SCHEMA_VERSIONS[minor], name
        for panel in _data_panels(dashboard):
            assert panel.get("pluginVersion") == tag, (name, panel["title"])


@pytest.mark.e2e
def test_datasources_have_fixed_uids_and_point_at_the_compose_services() -> None:
    compose = _compose()["services"]
    sources = _datasources()
    assert len({ds["uid"] for ds in sources}) == len(sources)
    assert {ds["type"] for ds in sources} == {"prometheus", "alertmanager", "tempo"}
    tempo_port = yaml.safe_load((COLLECTOR / "tempo.yaml").read_text())["server"]["http_listen_port"]
    expected_ports = {"prometheus": 9090, "alertmanager": 9093, "tempo": tempo_port}
    for ds in sources:
        url = urlsplit(ds["url"])
        assert url.scheme == "http" and url.hostname in compose, ds
        assert url.port == expected_ports[ds["type"]], ds
        assert ds["access"] == "proxy"
        # the container port is the one the service listens on (published as the same port for debugging)
        published = {str(p).split(":")[-1] for p in compose[url.hostname].get("ports", [])}
        assert str(url.port) in published, (ds["name"], published)
    assert [ds["uid"] for ds in sources if ds.get("isDefault")] == [_datasource("prometheus")["uid"]]
    prometheus_yml = yaml.safe_load((COLLECTOR / "prometheus.yml").read_text())
    assert _datasource("prometheus")["jsonData"]["timeInterval"] == prometheus_yml["global"]["scrape_interval"], \
        "Grafana derives $__rate_interval from the scrape interval"
    assert _datasource("tempo")["jsonData"]["tracesToMetrics"]["datasourceUid"] == _datasource("prometheus")["uid"]


def test_dashboard_provider_loads_the_mounted_folder() -> None:
    mounts = {v.split(":")[0]: v.split(":")[1] for v in _compose()["services"]["grafana"]["volumes"]
              if v.startswith("../")}
    assert (COLLECTOR / "../grafana/provisioning").resolve() == GRAFANA / "provisioning"
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_mount = mounts["../grafana/dashboards"]
    (provider,) = [p for path in PROVIDER_FILES for p in yaml.safe_load(path.read_text())["providers"]]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == dashboards_mount
    assert provider["allowUiUpdates"] is False


def _overlaps(a: dict[str, int], b: dict[str, int]) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


@pytest.mark.parametrize("name", [p.name for p in DASHBOARD_FILES])
def test_panels_ids_layout_titles_units(name: str) -> None:
    dashboard = _dashboards()[name]
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["y"] >= 0 and pos["x"] + pos["w"] <= 24, panel
        assert panel.get("title"), panel["id"]
    for i, a in enumerate(panels):
        for b in panels[i + 1:]:
            assert not _overlaps(a["gridPos"], b["gridPos"]), f"{name}: {a['title']!r} overlaps {b['title']!r}"
    for panel in _data_panels(dashboard):
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{name}: {panel['title']} has no unit"
        assert panel.get("description"), f"{name}: {panel['title']} has no description"
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": _datasource("prometheus")["uid"]}
        for override in panel["fieldConfig"]["overrides"]:
            # a table's value columns are named "Value #<refId>" by the Prometheus data source and keep that name
            # through the merge transformation (a byFrameRefID matcher would not survive it)
            assert override["matcher"]["id"] == "byName", panel["title"]
            column = re.fullmatch(r"Value #(\w+)", override["matcher"]["options"])
            if column:
                assert column[1] in {t["refId"] for t in panel["targets"]}, panel["title"]
                assert len(panel["targets"]) > 1 and panel["type"] == "table", panel["title"]


def _datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        ref = node.get("datasource")
        if isinstance(ref, dict):
            yield ref
        if "datasourceUid" in node:
            yield {"uid": node["datasourceUid"]}
        for value in node.values():
            yield from _datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasource_refs(value)


def test_every_datasource_uid_is_provisioned() -> None:
    provisioned = {ds["uid"]: ds["type"] for ds in _datasources()}
    for name, dashboard in _dashboards().items():
        refs = list(_datasource_refs(dashboard))
        assert refs
        for ref in refs:
            if ref["uid"] in BUILTIN_DATASOURCE_UIDS:
                continue
            assert ref["uid"] in provisioned, f"{name}: data source uid {ref['uid']!r} is not provisioned"
            if "type" in ref:
                assert ref["type"] == provisioned[ref["uid"]], (name, ref)
    for ds in _datasources():
        for ref in _datasource_refs(ds.get("jsonData", {})):
            assert ref["uid"] in provisioned, ds["name"]


_VARIABLE_USE = re.compile(r"\$\{([A-Za-z0-9_.]+)(?::[^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)|\[\[([A-Za-z0-9_]+)\]\]")


def _used_variables(text: str) -> set[str]:
    return {next(g for g in m.groups() if g).split(".")[0] for m in _VARIABLE_USE.finditer(text)}


@pytest.mark.parametrize("name", [p.name for p in DASHBOARD_FILES])
def test_variables_defined_multi_all_and_used(name: str) -> None:
    dashboard = _dashboards()[name]
    variables = dashboard["templating"]["list"]
    defined = [v["name"] for v in variables]
    assert defined[:len(REQUIRED_VARIABLES)] == list(REQUIRED_VARIABLES)
    for position, variable in enumerate(variables):
        assert variable["multi"] and variable["includeAll"], variable["name"]
        assert variable["datasource"]["uid"] == _datasource("prometheus")["uid"]
        assert variable["definition"] == _variable_query(variable)
        _label_values_parts(variable["definition"])
        used = {u for u in _used_variables(_variable_query(variable)) if not u.startswith("__")}
        assert used <= set(defined[:position]), f"{variable['name']} depends on a later variable: {used}"
    body = {k: v for k, v in dashboard.items() if k != "templating"}
    used = {u for text in _strings(body) for u in _used_variables(text) if not u.startswith("__")}
    assert used <= set(defined), f"{name}: undefined variables {used - set(defined)}"
    exprs = " ".join(t["expr"] for p in _data_panels(dashboard) for t in p["targets"])
    assert {"service", "model"} <= _used_variables(exprs), name


def test_rates_use_rate_interval_and_totals_use_range() -> None:
    for dashboard in _dashboards().values():
        for where, expr in _queries(dashboard):
            for function, window in re.findall(r"\b(rate|irate|increase)\((?:[^()\[\]]|\([^()]*\))*\[([^\]]+)\]",
                                               expr):
                expected = "$__range" if function == "increase" else "$__rate_interval"
                assert window == expected, f"{where}: {function}(...[{window}])"
            assert not re.search(r"\[\d", expr), f"{where}: a fixed range; use $__rate_interval or $__range"


def test_required_panels_exist() -> None:
    exprs = {d["uid"]: " ".join(e for _, e in _queries(d)) for d in _dashboards().values()}
    titles = {d["uid"]: [p["title"] for p in _data_panels(d)] for d in _dashboards().values()}
    overview, users, latency = exprs["otel-tokens-overview"], exprs["otel-tokens-users"], exprs["otel-tokens-latency"]
    assert names.PROM_LLM_TOKEN_USAGE in overview and names.PROM_LLM_COST in overview
    assert "sum by (gen_ai_request_model, gen_ai_token_type) (rate(" in overview
    assert f'{names.prometheus_label(names.LLM_USAGE_SOURCE)}="{names.SOURCE_ESTIMATED}"' in overview
    assert names.PROM_LLM_REQUESTS in overview and 'error_type!=""' in overview
    for kind in ("user_tokens", "user_cost", "department_tokens", "department_cost"):
        assert f"llm_quota:{kind}:ratio" in users and f"llm_quota:{kind}:limit" in users
    assert "ALERTS{" in users
    assert any("table" == p["type"] for p in _data_panels(_by_uid("otel-tokens-users")))
    assert any("bargauge" == p["type"] for p in _data_panels(_by_uid("otel-tokens-users")))
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, gen_ai_request_model) (rate({names.PROM_OPERATION_DURATION}" \
            in latency
        assert f"histogram_quantile({q}, sum by (le, gen_ai_request_model) (rate({names.PROM_TIME_TO_FIRST_CHUNK}" \
            in latency
    assert "Error ratio by model" in titles["otel-tokens-latency"]


def _by_uid(uid: str) -> dict[str, Any]:
    (found,) = [d for d in _dashboards().values() if d["uid"] == uid]
    return found


def _override_value(panel: dict[str, Any], ref: str, prop: str) -> Any:
    for override in panel["fieldConfig"]["overrides"]:
        if override["matcher"] == {"id": "byName", "options": f"Value #{ref}"}:
            for p in override["properties"]:
                if p["id"] == prop:
                    return p["value"]
    return panel["fieldConfig"]["defaults"].get(prop)


def _quota_targets() -> list[tuple[str, dict[str, Any], dict[str, Any], str]]:
    """(where, panel, target, recorded series) of every target that reads an llm_quota:* series."""
    out = []
    for dashboard in _dashboards().values():
        for panel in _data_panels(dashboard):
            for t in panel["targets"]:
                series = {m for m in promql_names(t["expr"])[0] if m.startswith("llm_quota:")}
                if series:
                    assert len(series) == 1, t["expr"]
                    out.append((f"{dashboard['title']} / {panel['title']} / {t['refId']}", panel, t, series.pop()))
    return out


def test_quota_percentages_have_thresholds_at_the_warning_ratio_and_100() -> None:
    warning = _shipped_quotas().warning_ratio * 100
    targets = _quota_targets()
    assert {s.rsplit(":", 1)[1] for *_, s in targets} >= {"24h", "month", "limit", "ratio"}
    for where, panel, t, series in targets:
        if series.endswith(":ratio"):
            assert t["expr"].startswith(("100 * ", "sort_desc(100 * ")), where
            assert _override_value(panel, t["refId"], "unit") == "percent", where
            steps = _override_value(panel, t["refId"], "thresholds")["steps"]
            assert [s["value"] for s in steps] == [None, warning, 100], where
            assert [s["color"] for s in steps] == ["green", "orange", "red"], where


def test_user_rows_link_to_their_traces_in_tempo() -> None:
    tempo = _datasource("tempo")
    user_label = names.prometheus_label(names.USER_ID)
    linked = 0
    titles: set[str] = set()
    for dashboard in _dashboards().values():
        for panel in _data_panels(dashboard):
            for override in panel["fieldConfig"]["overrides"]:
                for prop in override["properties"]:
                    if prop["id"] != "links":
                        continue
                    assert override["matcher"] == {"id": "byName", "options": user_label}, panel["title"]
                    for link in prop["value"]:
                        internal = link["internal"]
                        assert internal["datasourceUid"] == tempo["uid"]
                        assert internal["datasourceName"] == tempo["name"]
                        assert internal["query"]["queryType"] == "traceql"
                        assert internal["query"]["query"] == f'{{ span.{names.USER_ID} = "${{__value.raw}}" }}'
                        linked += 1
            user_columns = [o for o in panel["fieldConfig"]["overrides"]
                            if o["matcher"] == {"id": "byName", "options": user_label}]
            if user_columns:
                assert any(p["id"] == "links" for o in user_columns for p in o["properties"]), panel["title"]
                titles.add(panel["title"])
    assert linked >= 2
    assert {"Users", "User quotas (24 h)"} <= titles, titles


# --- names -----------------------------------------------------------------------------------------------------------
def _format_labels(text: str) -> set[str]:
    return set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", text))


def test_every_metric_and_label_is_emitted_recorded_or_prometheus_own() -> None:
    quotas = _shipped_quotas()
    recorded = recorded_series(quotas)
    metrics_allowed = emitted_metrics() | recorded | PROMETHEUS_METRICS
    rule_labels = {label for alert in rule_alerts(quotas) for label in alert["labels"]}
    labels_allowed = emitted_labels() | rule_labels | PROMETHEUS_LABELS
    used_metrics: set[str] = set()
    for dashboard in _dashboards().values():
        for where, expr in _queries(dashboard):
            metrics, labels = query_names(expr)
            assert metrics, where
            used_metrics |= metrics
            assert metrics <= metrics_allowed, f"{where}: unknown metrics {metrics - metrics_allowed}"
            assert labels <= labels_allowed, f"{where}: unknown labels {labels - labels_allowed}"
        for variable in dashboard["templating"]["list"]:
            assert _label_values_parts(variable["definition"])[1] in labels_allowed
        for panel in _data_panels(dashboard):
            for t in panel["targets"]:
                assert _format_labels(t.get("legendFormat", "")) <= labels_allowed, (panel["title"], t["legendFormat"])
            for override in panel["fieldConfig"]["overrides"]:
                field = override["matcher"]["options"]
                if not re.fullmatch(r"Value #\w+", field):
                    assert field in labels_allowed, (panel["title"], override)
            for transformation in panel.get("transformations", []):
                for field in transformation["options"].get("excludeByName", {}):
                    assert field in labels_allowed | {"Time", "Value"}, (panel["title"], field)
        for annotation in dashboard["annotations"]["list"]:
            text = " ".join(str(annotation.get(k, "")) for k in ("titleFormat", "textFormat"))
            assert _format_labels(text) | set(filter(None, annotation.get("tagKeys", "").split(","))) \
                <= labels_allowed, annotation
    assert emitted_metrics() - used_metrics <= {f"{names.PROM_TOKEN_USAGE}_{s}" for s in ("bucket", "sum", "count")} \
        | {f"{names.PROM_OPERATION_DURATION}_count", f"{names.PROM_TIME_TO_FIRST_CHUNK}_sum",
           f"{names.PROM_TIME_TO_FIRST_CHUNK}_count"}, "an instrument no dashboard shows"
    tempo_links = _datasource("tempo")["jsonData"]["tracesToMetrics"]
    for tag in tempo_links["tags"]:
        assert tag["key"] in {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}
        assert tag["value"] == names.prometheus_label(tag["key"])
    for q in tempo_links["queries"]:
        metrics, labels = promql_names(q["query"].replace("$$", "$"))
        assert metrics <= metrics_allowed and labels <= labels_allowed, q


def test_quota_alert_panel_lists_exactly_the_rendered_quota_alerts() -> None:
    alert_names = {a["alert"] for a in rule_alerts(_shipped_quotas())}
    found = 0
    for dashboard in _dashboards().values():
        for where, expr in _queries(dashboard):
            if "ALERTS" in query_names(expr)[0]:
                (pattern,) = re.findall(r'alertname=~"([^"]+)"', expr)
                assert set(pattern.split("|")) == alert_names, where
                found += 1
    assert found >= 2  # the panel and the annotation


# --- against a real Prometheus ---------------------------------------------------------------------------------------
def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


def _families(text: str) -> list[Any]:
    return list(text_string_to_metric_families(text))


def _totals(text: str, metric: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for family in _families(text):
        for sample in family.samples:
            if sample.name == metric and sample.labels.get(label):
                out[sample.labels[label]] += sample.value
    return dict(out)


def _openmetrics(text: str, extra: dict[str, str], timestamps: list[int]) -> str:
    """The app's accounting counters as OpenMetrics, each sample repeated at `timestamps` (seconds); empty label
    values are dropped as a Prometheus scrape drops them, so the series continue the scraped ones."""
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    lines = []
    wanted = {names.PROM_LLM_TOKEN_USAGE, names.PROM_LLM_COST, names.PROM_LLM_REQUESTS}
    for family in _families(text):
        for sample in family.samples:
            if sample.name not in wanted:
                continue
            labels = {**{k: v for k, v in sample.labels.items() if v}, **extra}
            selector = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items()))
            lines += [f"{sample.name}{{{selector}}} {sample.value!r} {t}" for t in timestamps]
    return "\n".join([*lines, "# EOF", ""])


def _wait(condition: Callable[[], Any], what: str, timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def _month_buckets_available(now: float) -> bool:
    """Month-to-date counts whole hourly buckets of the current UTC month: none exists in a month's first hour."""
    t = time.gmtime(now)
    month_start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    return now >= month_start + 3600


def _stop(process: subprocess.Popen[Any]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    prometheus = require_binary("prometheus")
    promtool = require_binary("promtool")
    tmp = tmp_path_factory.mktemp("dashboards")
    # A month-to-date bucket ends on the hour; crossing one mid-test would add a live bucket to the expectations
    # (test_quota_panels_agree_with_the_rendered_rules then leaves the departments out).
    if 3600 - time.time() % 3600 < 45:
        time.sleep(3600 - time.time() % 3600 + 2)
    processes: list[subprocess.Popen[Any]] = []
    try:
        port = free_port()
        app = subprocess.Popen([sys.executable, "-m", "tests.support.dashboard_app", str(port)], cwd=ROOT, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(tmp / "app.log", "w"))
        processes.append(app)
        assert app.stdout is not None and app.stdin is not None
        assert app.stdout.readline().strip() == f"ready {port}", (tmp / "app.log").read_text()

        def run_round() -> str:
            assert app.stdin is not None and app.stdout is not None
            app.stdin.write("round\n")
            app.stdin.flush()
            assert app.stdout.readline().strip() == "done", (tmp / "app.log").read_text()
            return _get(f"http://127.0.0.1:{port}/metrics")

        first = run_round()

        # The first round, backfilled 50 to 10 minutes before the last full hour, as the series a scrape of the app
        # (job "app") makes: the hourly bucket that ends on that hour holds it.
        now = time.time()
        hour = int(now // 3600 * 3600)
        target = f"127.0.0.1:{port}"
        data = tmp / "prom-data"
        (tmp / "history.om").write_text(
            _openmetrics(first, {"job": JOB, "instance": target}, list(range(hour - 3000, hour - 599, 60))))
        subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(tmp / "history.om"), str(data)],
                       check=True, capture_output=True)

        quota_file = tmp / "quotas.yaml"
        quota_file.write_text(yaml.safe_dump(QUOTAS))
        quotas = parse_quotas(QUOTAS, str(quota_file))
        rules = tmp / "rules"
        rules.mkdir()
        (rules / "quotas.yml").write_text(render_text(quotas, for_="1s"))
        rule_glob = str(rules / "*.yml")
        url, prom = start_prometheus(tmp, prometheus, [target], rule_glob)
        processes.append(prom)

        # The rule file's own hourly bucket rules, evaluated over the backfilled hour.
        buckets = [rule for group in render(quotas)["groups"] for rule in group["rules"]
                   if rule.get("record", "").endswith(":1h")]
        assert len(buckets) == 2
        (tmp / "buckets.yml").write_text(yaml.safe_dump({"groups": [{"name": "buckets", "rules": buckets}]}))
        subprocess.run([promtool, "tsdb", "create-blocks-from", "rules", f"--start={hour - 3300}", f"--end={hour}",
                        f"--url={url}", f"--output-dir={tmp / 'rule-blocks'}", "--eval-interval=60s",
                        str(tmp / "buckets.yml")], check=True, capture_output=True)
        _stop(prom)
        processes.remove(prom)
        for block in (tmp / "rule-blocks").iterdir():
            shutil.move(str(block), data / block.name)
        url, prom = start_prometheus(tmp, prometheus, [target], rule_glob)
        processes.append(prom)
        _wait(lambda: query(url, f'up{{job="{JOB}"}} == 1'), "a scrape of the app")

        last = run_round()  # live traffic: rates over the last minute
        tokens = _totals(last, names.PROM_LLM_TOKEN_USAGE, "user_id")
        _wait(lambda: {r["metric"]["user_id"]: float(r["value"][1])
                       for r in query(url, "llm_quota:user_tokens:24h")} == tokens, "the users' 24 h usage")
        _wait(lambda: query(url, 'ALERTS{alertname="LLMUserTokenQuota", user_id="carol", severity="critical", '
                                 'alertstate="firing"}'), "carol's critical quota alert")
        months = _month_buckets_available(now)
        if months:
            _wait(lambda: query(url, "llm_quota:department_cost:ratio"), "the departments' month to date")
        yield {"url": url, "first": first, "last": last, "quotas": quotas, "months": months, "hour": hour}
    finally:
        for process in reversed(processes):
            _stop(process)


# Grafana's Prometheus data source escapes regex characters in a multi-value variable's values.
_REGEX_SPECIAL = re.compile(r"([\\^$*+?.()|{}\[\]])")


def _grafana_regex(values: list[str]) -> str:
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


def _label_values(url: str, definition: str, values: dict[str, str]) -> list[str]:
    """What Grafana's Prometheus data source lists for label_values(selector, label): the label values API with the
    selector as match[] (variables in it interpolated) over the dashboard's time range."""
    selector, label = _label_values_parts(interpolate(definition, values))
    params = {"start": str(time.time() - 6 * 3600), "end": str(time.time())}
    if selector:
        params["match[]"] = selector
    body = _get(f"{url}/api/v1/label/{label}/values?{urlencode(params)}")
    assert body["status"] == "success", body
    return sorted(body["data"])


def _options(stack: dict[str, Any], dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """Each variable's options, resolved in order with the earlier ones at All."""
    options: dict[str, list[str]] = {}
    values: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        options[variable["name"]] = _label_values(stack["url"], variable["definition"], values)
        values[variable["name"]] = variable["allValue"]
    return options


def _substitutions(dashboard: dict[str, Any], options: dict[str, list[str]]) -> list[tuple[str, dict[str, str]]]:
    variables = dashboard["templating"]["list"]
    all_value = {v["name"]: v["allValue"] for v in variables}
    out = [("All as allValue", all_value),
           ("All as every value", {n: _grafana_regex(vals) for n, vals in options.items()})]
    for name, vals in options.items():
        for value in vals:
            out.append((f"{name}={value}", {**all_value, name: _grafana_regex([value])}))
    out.append(("one of each", {"service": JOB, "model": "tiny-gpt2", "department": "research", "user": "alice"}))
    return out


@pytest.mark.e2e
def test_variables_list_what_the_app_produced(stack: dict[str, Any]) -> None:
    for dashboard in _dashboards().values():
        options = _options(stack, dashboard)
        assert options == {"service": [JOB], "model": sorted(MODELS),
                           "department": sorted({d for _, d, _ in USERS}),
                           "user": sorted({u for u, _, _ in USERS})}, dashboard["title"]
        values = {v["name"]: v["allValue"] for v in dashboard["templating"]["list"]}
        assert _label_values(stack["url"], dashboard["templating"]["list"][3]["definition"],
                             {**values, "department": "research"}) == ["alice", "bob"]


def _department_month(expr: str) -> bool:
    return bool(re.search(r"llm_quota:department_\w+:(month|ratio)", expr)) or (
        "llm_quota:department_" in expr and ":limit" in expr)


@pytest.mark.e2e
def test_every_query_returns_data(stack: dict[str, Any]) -> None:
    url = stack["url"]
    ran = 0
    for dashboard in _dashboards().values():
        options = _options(stack, dashboard)
        for label, values in _substitutions(dashboard, options):
            for where, expr in _queries(dashboard):
                promql = interpolate(expr, values)
                if promql.startswith("label_values("):
                    result = _label_values(url, _variable_query({"query": expr}), values)
                    assert result, f"{where} [{label}]: no values"
                    continue
                result = query(url, promql)
                ran += 1
                if _department_month(expr) and not stack["months"]:
                    # first hour of a UTC month: no whole bucket of this month yet (overrides still have a limit)
                    continue
                assert result, f"{where} [{label}]: no data for\n{promql}"
                for series in result:
                    value = float(series["value"][1])
                    assert math.isfinite(value), f"{where} [{label}]: {series}\n{promql}"
    assert ran > 300


def _selectors(expr: str) -> list[str]:
    """The vector selectors of an expression (metric name with its matchers, if any)."""
    metrics, _ = promql_names(expr)
    found = []
    for metric in metrics:
        for match in re.finditer(rf"(?<![\w:]){re.escape(metric)}(?![\w:])(\s*\{{[^{{}}]*\}})?", expr):
            found.append(match.group().replace(" ", "") if not match.group(1) else metric + match.group(1).strip())
    return found


@pytest.mark.e2e
def test_every_selector_matches_series(stack: dict[str, Any]) -> None:
    """With every variable at All, each selector on its own matches series: a fallback such as `or ... * 0`
    cannot hide a selector that matches nothing (a misspelt label value)."""
    checked = 0
    for dashboard in _dashboards().values():
        values = {v["name"]: v["allValue"] for v in dashboard["templating"]["list"]}
        for where, expr in _queries(dashboard):
            if expr.startswith("label_values("):
                expr = _label_values_parts(expr)[0] or ""
            for selector in _selectors(interpolate(expr, values)):
                if _department_month(selector) and not stack["months"]:
                    continue
                assert query(stack["url"], f"count({selector})"), f"{where}: {selector} matches nothing"
                checked += 1
    assert checked > 50


@pytest.mark.e2e
def test_tempo_traces_to_metrics_query_returns_data(stack: dict[str, Any]) -> None:
    links = _datasource("tempo")["jsonData"]["tracesToMetrics"]
    span = {"user.id": "alice", "gen_ai.request.model": "tiny-llama-chat"}
    tags = ", ".join(f'{t["value"]}="{span[t["key"]]}"' for t in links["tags"])
    for q in links["queries"]:
        promql = q["query"].replace("$$", "$").replace("$__tags", tags)
        assert query(stack["url"], promql), promql


@pytest.mark.e2e
def test_names_in_queries_exist_on_the_live_series(stack: dict[str, Any]) -> None:
    """Each label a query filters or groups by is carried by one of the metrics it reads, in what the package
    (and the rules built on it) actually produced."""
    for dashboard in _dashboards().values():
        for where, expr in _queries(dashboard):
            metrics, labels = query_names(expr)
            if any(_department_month(m) for m in metrics) and not stack["months"]:
                continue
            selector = "|".join(re.escape(m) for m in sorted(metrics))
            for label in labels - {"__name__"}:
                found = query(stack["url"], f'count({{__name__=~"{selector}", {label}!=""}})')
                assert found, f"{where}: no series of {sorted(metrics)} has the label {label}"


def _limit(quotas: Quotas, principal: str, kind: str, name: str) -> float:
    scope = quotas.users if principal == "user" else quotas.departments
    override = scope.overrides.get(name)
    value = override.get(kind) if override is not None else None
    result = value if value is not None else scope.default.get(kind)
    assert result is not None
    return float(result)


@pytest.mark.e2e
def test_quota_panels_agree_with_the_rendered_rules(stack: dict[str, Any]) -> None:
    """Every quota panel query (All) returns, per user / department, the usage the app reported, the limit of the
    quota file and their ratio (x100 where the panel shows percent)."""
    quotas: Quotas = stack["quotas"]
    usage = {
        ("user", "tokens"): _totals(stack["last"], names.PROM_LLM_TOKEN_USAGE, "user_id"),
        ("user", "cost"): _totals(stack["last"], names.PROM_LLM_COST, "user_id"),
        # month to date: the whole hour that was backfilled with the first round (the current hour is not counted)
        ("department", "tokens"): _totals(stack["first"], names.PROM_LLM_TOKEN_USAGE, "department"),
        ("department", "cost"): _totals(stack["first"], names.PROM_LLM_COST, "department"),
    }
    # Exact month-to-date needs the backfilled hour to be the last whole one (and one of this month).
    departments = stack["months"] and time.time() // 3600 * 3600 == stack["hour"]
    checked: set[str] = set()
    for where, _panel, t, series in _quota_targets():
        principal_kind, what = series.split(":")[1:]
        principal, kind = principal_kind.split("_")
        label = "user_id" if principal == "user" else "department"
        if principal == "department" and not departments:
            continue
        all_values = {"user": ".*", "department": ".*"}
        result = {r["metric"][label]: float(r["value"][1]) for r in query(stack["url"], interpolate(t["expr"],
                                                                                                   all_values))}
        used = usage[(principal, kind)]
        scope = quotas.users if principal == "user" else quotas.departments
        limited = set(used) | {n for n, limits in scope.overrides.items() if limits.get(kind) is not None}
        if what == "limit":
            expected = {n: _limit(quotas, principal, kind, n) for n in limited}
        elif what == "ratio":
            expected = {n: 100 * used[n] / _limit(quotas, principal, kind, n) for n in used}
        else:
            expected = used
        assert result.keys() == expected.keys(), where
        for name, value in expected.items():
            assert result[name] == pytest.approx(value, rel=1e-9), f"{where}: {name}"
        checked.add(f"{principal}_{kind}:{what}")
    expected_kinds = {f"user_{k}:{w}" for k in ("tokens", "cost") for w in ("24h", "limit", "ratio")}
    if departments:
        expected_kinds |= {f"department_{k}:{w}" for k in ("tokens", "cost") for w in ("month", "limit", "ratio")}
    assert checked >= expected_kinds


@pytest.mark.e2e
def test_quota_alert_panel_shows_the_firing_alert(stack: dict[str, Any]) -> None:
    (alerts,) = [t for d in _dashboards().values() for p in _data_panels(d) for t in p["targets"]
                 if "ALERTS" in promql_names(t["expr"])[0]]
    firing = {(r["metric"]["alertname"], r["metric"]["severity"], r["metric"].get("user_id", ""),
               r["metric"].get("department", "")) for r in query(stack["url"], alerts["expr"])}
    assert ("LLMUserTokenQuota", "critical", "carol", "") in firing
    assert ("LLMUserTokenQuota", "warning", "carol", "") in firing
    if stack["months"]:
        assert ("LLMDepartmentTokenBudget", "critical", "", "support") in firing
    assert all(user in ("", "carol") for _, _, user, _ in firing), firing
