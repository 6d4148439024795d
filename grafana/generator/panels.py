"""Panel factories: one call per panel, the house style (legends, colours, thresholds at the quota ratios, user
cells linked to their traces) decided here once. A new panel is a title, a description, its queries, a unit."""

from collections.abc import Sequence
from dataclasses import dataclass
from string import ascii_uppercase

from grafana_foundation_sdk.builders import bargauge, common, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.dashboard import FieldColor, ThresholdsConfig
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat, QueryEditorMode

from otel_tokens import names

PROMETHEUS = dm.DataSourceRef(type_val="prometheus", uid="prometheus")
TEMPO = dm.DataSourceRef(type_val="tempo", uid="tempo")
TEMPO_NAME = "Tempo"  # the provisioned name; a data link names its data source by uid and name
Steps = Sequence[tuple[float | None, str]]
BASE: Steps = ((None, "green"),)
COLOURED_CELL = cm.TableColoredBackgroundCellOptions(mode=cm.TableCellBackgroundDisplayMode.BASIC)


def thresholds(steps: Steps) -> ThresholdsConfig:
    return ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=value, color=color) for value, color in steps])


def quota_steps(warning_ratio: float) -> Steps:
    """Green, orange from the warning ratio, red from 100 %: the alerts' severities on a percentage."""
    return ((None, "green"), (warning_ratio * 100, "orange"), (100, "red"))


def _query(expr: str, ref: str, legend: str, instant: bool, as_table: bool) -> prometheus.Dataquery:
    q = (prometheus.Dataquery().datasource(PROMETHEUS).editor_mode(QueryEditorMode.CODE).expr(expr).ref_id(ref)
         .legend_format(legend))
    q = q.instant() if instant else q.range()
    return q.format(PromQueryFormat.TABLE) if as_table else q


def _color(mode: dm.FieldColorModeId | str) -> FieldColor:
    return FieldColor().mode(mode)  # type: ignore[arg-type]  # a continuous scheme's id is not in the enum


def stat_panel(title: str, description: str, expr: str, *, legend: str = "__auto", unit: str = "short",
               decimals: int | None = None, steps: Steps = BASE, with_names: bool = False) -> stat.Panel:
    """One number over the dashboard's time range."""
    panel = (stat.Panel().title(title).description(description).datasource(PROMETHEUS).unit(unit)
             .with_target(_query(expr, "A", legend, instant=True, as_table=False))
             .color_scheme(_color(dm.FieldColorModeId.THRESHOLDS)).thresholds(thresholds(steps))
             .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
             .color_mode(cm.BigValueColorMode.VALUE).graph_mode(cm.BigValueGraphMode.NONE)
             .text_mode(cm.BigValueTextMode.VALUE_AND_NAME if with_names else cm.BigValueTextMode.AUTO))
    return panel.decimals(decimals) if decimals is not None else panel


def timeseries_panel(title: str, description: str, *queries: tuple[str, str], unit: str, stacked: bool = False,
                     max_value: float | None = None) -> timeseries.Panel:
    """Rates over time, one target per (expr, legend); stacked areas where the series add up to a whole."""
    panel = (timeseries.Panel().title(title).description(description).datasource(PROMETHEUS).unit(unit).min(0)
             .color_scheme(_color(dm.FieldColorModeId.PALETTE_CLASSIC)).thresholds(thresholds(BASE))
             .show_points(cm.VisibilityMode.NEVER).axis_soft_min(0).line_width(1)
             .fill_opacity(20 if stacked else 10)
             .stacking(common.StackingConfig().mode(cm.StackingMode.NORMAL if stacked else cm.StackingMode.NONE)
                       .group("A"))
             .legend(common.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                     .placement(cm.LegendPlacement.BOTTOM).show_legend(True).calcs(["mean", "max", "lastNotNull"]))
             .tooltip(common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)))
    for ref, (expr, legend) in zip(ascii_uppercase, queries, strict=False):
        panel = panel.with_target(_query(expr, ref, legend, instant=False, as_table=False))
    return panel.max(max_value) if max_value is not None else panel


def bargauge_panel(title: str, description: str, expr: str, legend: str, *, unit: str = "short",
                   decimals: int | None = None, steps: Steps | None = None) -> bargauge.Panel:
    """A ranking at the end of the range; with `steps`, a percentage of a limit coloured by the alert levels."""
    panel = (bargauge.Panel().title(title).description(description).datasource(PROMETHEUS).unit(unit).min(0)
             .with_target(_query(expr, "A", legend, instant=True, as_table=False))
             .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
             .display_mode(cm.BarGaugeDisplayMode.GRADIENT).orientation(cm.VizOrientation.HORIZONTAL)
             .show_unfilled(True).value_mode(cm.BarGaugeValueMode.COLOR)
             .name_placement(cm.BarGaugeNamePlacement.LEFT).sizing(cm.BarGaugeSizing.AUTO)
             .min_viz_height(16).min_viz_width(8).max_viz_height(300))
    if steps is None:
        panel = panel.color_scheme(_color("continuous-BlPu")).thresholds(thresholds(BASE))
    else:
        panel = panel.color_scheme(_color(dm.FieldColorModeId.THRESHOLDS)).thresholds(thresholds(steps)).max(100)
    return panel.decimals(decimals) if decimals is not None else panel


@dataclass(frozen=True)
class Column:
    """A table column from one instant query: Grafana names it `Value #<refId>` through the merge."""

    expr: str
    title: str
    decimals: int | None = None
    steps: Steps | None = None  # a percentage of a limit, its cell coloured by the alert levels


@dataclass(frozen=True)
class LabelColumn:
    label: str
    title: str


def traces_link(label: str) -> list[dict[str, object]]:
    """A user cell's data link: that user's spans in Tempo (TraceQL on the span attribute)."""
    assert label == names.prometheus_label(names.USER_ID)
    return [{"title": "Traces of ${__value.raw} in Tempo", "url": "", "internal": {
        "datasourceUid": TEMPO.uid, "datasourceName": TEMPO_NAME,
        "query": {"refId": "A", "datasource": TEMPO.to_json(), "queryType": "traceql",
                  "query": f'{{ span.{names.USER_ID} = "${{__value.raw}}" }}', "limit": 50, "tableType": "traces"}}}]


def table_panel(title: str, description: str, columns: Sequence[Column], labels: Sequence[LabelColumn], *,
                sort_by: str | None = None, descending: bool = True, hidden: Sequence[str] = (),
                value_columns: bool = True) -> table.Panel:
    """Instant queries merged into one row per label set; user cells link to their traces. Without
    `value_columns` the queries' values are not shown (a table of label sets such as the firing alerts)."""
    panel = (table.Panel().title(title).description(description).datasource(PROMETHEUS).unit("short")
             .color_scheme(_color(dm.FieldColorModeId.THRESHOLDS)).thresholds(thresholds(BASE))
             .align(cm.FieldTextAlignment.AUTO).cell_options(cm.TableAutoCellOptions()).inspect(False)
             .filterable(True).show_header(True).cell_height(cm.TableCellHeight.SM)
             .footer(common.TableFooterOptions().show(False).reducer(["sum"]).count_rows(False).fields(""))
             .sort_by([common.TableSortByFieldState().display_name(sort_by).desc(descending)] if sort_by else [])
             .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
             .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                 "excludeByName": dict.fromkeys(["Time", *hidden], True), "indexByName": {}, "renameByName": {}})))
    for column in labels:
        properties = [dm.DynamicConfigValue(id_val="displayName", value=column.title)]
        if column.label == names.prometheus_label(names.USER_ID):
            properties.append(dm.DynamicConfigValue(id_val="links", value=traces_link(column.label)))
        panel = panel.override_by_name(column.label, properties)
    for ref, column in zip(ascii_uppercase, columns, strict=False):
        panel = panel.with_target(_query(column.expr, ref, "__auto", instant=True, as_table=True))
        if not value_columns:
            continue
        properties = [dm.DynamicConfigValue(id_val="displayName", value=column.title),
                      dm.DynamicConfigValue(id_val="unit", value="percent" if column.steps else "short")]
        if column.decimals is not None:
            properties.append(dm.DynamicConfigValue(id_val="decimals", value=column.decimals))
        if column.steps:
            properties += [dm.DynamicConfigValue(id_val="thresholds", value=thresholds(column.steps).build()),
                           dm.DynamicConfigValue(id_val="color", value=_color(dm.FieldColorModeId.THRESHOLDS).build()),
                           dm.DynamicConfigValue(id_val="custom.cellOptions", value=COLOURED_CELL)]
        panel = panel.override_by_name(f"Value #{ref}", properties)
    return panel
