"""Temporary quota grants (`otel-tokens quota grant`): which are in force, and the limits they raise. The rules
record each grant as a series of its amount that exists only from its start to its end, and each granted
principal's limit with them (otel_tokens.ops.grant_rules): what the alerts, the limit panels and the headroom
above already count."""

from grafana.generator import queries as q
from grafana.generator.panels import Column, LabelColumn, table_panel, timeseries_panel
from grafana.generator.quota_panels import COLUMN
from otel_tokens.quota.vocabulary import APP, COST, DEPARTMENT, TOKENS, USER

PRINCIPAL_LEGEND = f"{{{{{USER.label}}}}}{{{{{DEPARTMENT.label}}}}}{{{{{APP.label}}}}}"  # a series has one of them
FILTERED = "Each grant is filtered by its own scope's variable alone (a user's by the user, an app's by the app)."


def _granted_limits(kind: str, noun: str) -> object:
    return timeseries_panel(
        f"Limits raised by grants: {noun}",
        f"The {noun} limit in force of each principal with a grant in force, per window: its override or the default "
        f"plus its grants, from the grant's start to its end. {FILTERED}",
        (q.granted("limit_granted", (kind,)), f"{PRINCIPAL_LEGEND} · {{{{window}}}}"), unit="short")


def rows() -> list[tuple[int, int, list]]:
    """(height, width, panels) rows of the users and departments dashboard."""
    grants = q.granted(q.GRANT)
    return [
        (9, 24, [table_panel(
            "Quota grants in force",
            "Every grant in force now (approved, between its start and its end): whose limit it raises (user, "
            "department or app), by how much, in which window and kind, and that principal's limit with all its "
            f"grants. A grant stops counting at its end with no re-render of the rules. {FILTERED}",
            [Column(grants, "Amount"), Column(q.granted_limit(grants), "Limit with grants")],
            [COLUMN[USER.name], COLUMN[DEPARTMENT.name], COLUMN[APP.name], LabelColumn(q.GRANT, "Grant"),
             LabelColumn("window", "Window"), LabelColumn("quota", "Quota")], sort_by="Grant", descending=False)]),
        (8, 12, [_granted_limits(TOKENS, "tokens"), _granted_limits(COST, "cost")]),
    ]
