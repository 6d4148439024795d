"""What every dashboard shares: the chained variables, the quota-alert annotation, the link between the
dashboards, the Grafana version the JSON is written for, and the serialization."""

import json
from collections.abc import Callable
from pathlib import Path

import yaml
from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from grafana.generator import queries as q
from grafana.generator.panels import PROMETHEUS
from grafana.generator.sdk_extras import PROMETHEUS_ANNOTATION_FIELDS, QUERY_VARIABLE_FIELDS, WithFields
from otel_tokens import names
from otel_tokens.quota.file import load_quotas

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "collector" / "docker-compose.yml"
SHIPPED_QUOTAS = ROOT / "collector" / "quotas.yaml"
TAG = "otel-tokens"
# The dashboard JSON schema version Grafana 12.2 (the compose pin) saves: set so that it runs no migration on
# load. The SDK's 11.6 schema line writes 41; nothing between 41 and 42 changes a field these dashboards use.
SCHEMA_VERSION = 42


def grafana_version() -> str:
    """The Grafana the stack pins (collector/docker-compose.yml): panels carry it as pluginVersion, so Grafana
    runs no panel migration on load."""
    image = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]["image"]
    return str(image.rsplit(":", 1)[1])


def warning_ratio() -> float:
    """The shipped quota file's warning ratio: the orange threshold of every quota percentage."""
    return load_quotas(SHIPPED_QUOTAS).warning_ratio


_VARIABLE_SOURCES = {"app": names.PROM_LLM_REQUESTS, "model": names.PROM_LLM_REQUESTS,
                     "department": names.PROM_LLM_TOKEN_USAGE, "user": names.PROM_LLM_TOKEN_USAGE}
_VARIABLE_TEXT = {
    "app": ("App", "service_name: the instrumented process's service.name (OTEL_SERVICE_NAME), the app of the quota "
            "file's apps section. The package's counters carry it on both export paths; the semconv histograms and "
            "guard decisions only through the collector (scraped directly they show every app)."),
    "model": ("Model", names.GEN_AI_REQUEST_MODEL),
    "department": ("Department", f"{names.DEPARTMENT} (attribution)"),
    "user": ("User", f"{names.USER_ID} (attribution)"),
}


def _variable(position: int, name: str) -> Builder[dm.VariableModel]:
    """label_values of the variable's label, filtered by the variables before it (user chains on department)."""
    before = tuple(v for v in q.ALL_FILTERS[:position] if v != "model")
    metric = _VARIABLE_SOURCES[name]
    source = q.selector(metric, filters=before) if before else metric
    definition = f"label_values({source}, {q.VARIABLES[name]})"
    label, description = _VARIABLE_TEXT[name]
    variable = (dashboard.QueryVariable(name).label(label).description(description).datasource(PROMETHEUS)
                .query({"qryType": 1, "query": definition, "refId": "PrometheusVariableQueryEditor-VariableQuery"})
                .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
                .multi(True).include_all(True).all_value(".*").regex("").hide(dm.VariableHide.DONT_HIDE)
                .current(dm.VariableOption(text=["All"], value=["$__all"])).options([]))
    return WithFields(variable, QUERY_VARIABLE_FIELDS, definition=definition)


def _annotations() -> list[Builder[dm.AnnotationQuery]]:
    builtin = (dashboard.AnnotationQuery().name("Annotations & Alerts").built_in(1).type("dashboard").enable(True)
               .hide(True).icon_color("rgba(0, 211, 255, 1)")
               .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --")))
    alerts = (dashboard.AnnotationQuery().name("Quota alerts").datasource(PROMETHEUS).enable(True).hide(False)
              .icon_color("red").expr(q.FIRING_QUOTA_ALERTS).built_in(0))
    return [builtin, WithFields(alerts, PROMETHEUS_ANNOTATION_FIELDS, step="60s",
                                titleFormat="{{alertname}} ({{severity}})",
                                textFormat="{{" + q.USER + "}}{{" + q.DEPARTMENT + "}}{{" + q.APP + "}}",
                                tagKeys="severity,window,quota", useValueForTime=False)]


def new_dashboard(uid: str, title: str, description: str) -> dashboard.Dashboard:
    board = (dashboard.Dashboard(title).uid(uid).description(description).tags([TAG, "llm"]).editable()
             .tooltip(dm.DashboardCursorSync.CROSSHAIR).time("now-6h", "now").refresh("1m").timezone("browser")
             .fiscal_year_start_month(0).week_start("").preload(False).version(1)
             .link(dashboard.DashboardLink(TAG).type(dm.DashboardLinkType.DASHBOARDS).tags([TAG]).icon("external link")
                   .as_dropdown(False).include_vars(True).keep_time(True).target_blank(False).tooltip("").url("")))
    for position, name in enumerate(q.ALL_FILTERS):
        board = board.with_variable(_variable(position, name))
    for annotation in _annotations():
        board = board.annotation(annotation)
    return board


def finish(board: dashboard.Dashboard) -> dm.Dashboard:
    """Panel ids in order, the pinned Grafana's pluginVersion and schema version."""
    built = board.build()
    built.schema_version = SCHEMA_VERSION
    version = grafana_version()
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number
        if isinstance(panel, dm.Panel):
            panel.plugin_version = version
    return built


def to_json(built: dm.Dashboard) -> str:
    return json.dumps(built, cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


Generator = Callable[[], dm.Dashboard]
