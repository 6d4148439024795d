"""The Grafana dashboards and provisioning in grafana/: valid JSON, ids, layout, data sources with fixed uids,
variables, units, thresholds at the quota ratios, trace links."""


import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from otel_tokens import names
from tests.support.grafana import (
    _VARIABLE_USE,
    BUILTIN_DATASOURCE_UIDS,
    COLLECTOR,
    DASHBOARD_FILES,
    DATASOURCE_FILES,
    GRAFANA,
    GRAFANA_SCHEMA_VERSIONS,
    PROVIDER_FILES,
    REQUIRED_VARIABLES,
    _compose,
    _dashboards,
    _data_panels,
    _datasource,
    _datasources,
    _label_values_parts,
    _panels,
    _queries,
    _quota_targets,
    _shipped_quotas,
    _strings,
    _variable_query,
)


def test_grafana_files_exist_and_parse() -> None:
    assert len(DASHBOARD_FILES) == 4, DASHBOARD_FILES
    assert DATASOURCE_FILES and PROVIDER_FILES
    uids = [d["uid"] for d in _dashboards().values()]
    assert len(uids) == len(set(uids)), uids
    for dashboard in _dashboards().values():
        assert dashboard.get("id") is None, "provisioned dashboards carry no database id"
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
    assert {"app", "model"} <= _used_variables(exprs), name


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
    apps = exprs["otel-tokens-apps"]
    for kind in ("app_tokens", "app_cost"):
        assert f"llm_quota:{kind}:ratio" in apps and f"llm_quota:{kind}:limit" in apps
    assert "llm_quota:app_(tokens|cost):(24h_|day_|week_|year_)?forecast_ratio" in apps
    assert "sum by (service_name) (rate(llm_token_usage_total{" in apps
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


def test_the_app_filter_keeps_series_without_service_name() -> None:
    """Our counters carry service_name on both export paths and are filtered by `=~"$app"`; the semconv histograms
    and the guard decisions carry it only through the collector, so their matcher also matches the empty label
    (a direct scrape's series have none): choosing an app never empties their panels."""
    counters = {names.PROM_LLM_TOKEN_USAGE, names.PROM_LLM_COST, names.PROM_LLM_REQUESTS}
    seen: dict[str, set[str]] = {"counter": set(), "optional": set()}
    for dashboard in _dashboards().values():
        for where, expr in _queries(dashboard):
            for metric, matchers in re.findall(r"([a-z_]+)\{([^{}]*)\}", expr):
                app = re.findall(r'service_name=~"([^"]*)"', matchers)
                if metric in counters:
                    assert app == ["$app"], (where, metric, matchers)
                    seen["counter"].add(metric)
                elif metric.startswith("gen_ai_client_") or metric == names.PROM_GUARD_DECISIONS:
                    assert app == ["$app|"], (where, metric, matchers)
                    seen["optional"].add(metric)
    assert seen["counter"] == counters and names.PROM_GUARD_DECISIONS in seen["optional"], seen
    assert any(m.startswith(names.PROM_OPERATION_DURATION) for m in seen["optional"]), seen
