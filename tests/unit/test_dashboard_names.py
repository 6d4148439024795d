"""Every metric and label a dashboard names is one the package emits, a recorded llm_quota:* series of the
rendered rules, or Prometheus's own; the quota alert panel lists exactly the rendered alerts."""


import re

from otel_tokens import names
from tests.support.grafana import (
    PROMETHEUS_LABELS,
    PROMETHEUS_METRICS,
    _dashboards,
    _data_panels,
    _datasource,
    _label_values_parts,
    _queries,
    _shipped_quotas,
    emitted_labels,
    emitted_metrics,
    promql_names,
    query_names,
    recorded_series,
    recording_labels,
    rule_alerts,
)


def test_promql_name_extraction() -> None:
    metrics, labels = promql_names(
        'label_replace(sum by (gen_ai_request_model, error_type) (rate(llm_requests_total{job=~"$service", '
        'user_id=~"${user}"}[$__rate_interval])), "error_type", "ok", "error_type", "")'
        ' / on(user_id) group_left(window) llm_quota:user_cost:limit > 0.8 and 100 * llm_quota:x:ratio'
        ' or histogram_quantile(0.9, sum by (le) (rate(gen_ai_client_token_usage_bucket[5m]))) @ end()')
    assert metrics == {"llm_requests_total", "llm_quota:user_cost:limit", "llm_quota:x:ratio",
                       "gen_ai_client_token_usage_bucket"}
    assert labels == {"gen_ai_request_model", "error_type", "job", "user_id", "window", "le"}


def _format_labels(text: str) -> set[str]:
    return set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", text))


def test_every_metric_and_label_is_emitted_recorded_or_prometheus_own() -> None:
    quotas = _shipped_quotas()
    recorded = recorded_series(quotas)
    metrics_allowed = emitted_metrics() | recorded | PROMETHEUS_METRICS
    rule_labels = {label for alert in rule_alerts(quotas) for label in alert["labels"]} | recording_labels(quotas)
    labels_allowed = emitted_labels() | rule_labels | PROMETHEUS_LABELS
    used_metrics: set[str] = set()
    for dashboard in _dashboards().values():
        for where, expr in _queries(dashboard):
            metrics, labels = query_names(expr)
            by_regex = re.search(r'__name__=~"([^"]+)"', expr)
            if not metrics and by_regex:  # the every-window panels: the names the regex matches
                metrics = {m for m in metrics_allowed if re.fullmatch(by_regex.group(1), m)}
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
           f"{names.PROM_TIME_TO_FIRST_CHUNK}_count",
           # the quota rules' input: the dashboards show it through the rules' recorded llm_quota:* series
           names.PROM_QUOTA_TOKENS, names.PROM_QUOTA_COST}, "an instrument no dashboard shows"
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
