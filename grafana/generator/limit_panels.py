"""At the limit in budget mode: calls shortened to what remains (`fit`) and calls moved to a cheaper model or
another server (`downgrade`), from llm.guard.decisions. The decisions carry the scope and window that decided, never
the user (their cardinality is the scopes' and windows', whatever the number of users)."""

from grafana.generator import queries as q
from grafana.generator.panels import bargauge_panel, timeseries_panel
from otel_tokens import names
from otel_tokens.quota.vocabulary import DOWNGRADE, FIT

AT_THE_LIMIT = f'{names.GUARD_DECISION}=~"{FIT}|{DOWNGRADE}"'
WHERE = ("Scraped directly (not through the collector) the decisions carry no app: every app shows. Which model "
         "served the moved calls: the tokens by model panels (the metrics carry the model that served).")


def rows() -> list[tuple[int, int, list]]:
    """(height, width, panels) rows of the users and departments dashboard."""
    decisions = q.selector(names.PROM_GUARD_DECISIONS, AT_THE_LIMIT, filters=("app",), app_optional=True)
    legend = f"{{{{{names.GUARD_DECISION}}}}} {{{{{names.GUARD_SCOPE}}}}} {{{{{names.GUARD_WINDOW}}}}}"
    return [(8, 12, [
        timeseries_panel(
            "At the limit: calls shortened (fit) or moved (downgrade)/s",
            "Budget mode's calls that would have crossed a limit and went through anyway: `fit`, their output limit "
            "lowered to what remained (the reply ends with finish_reason length); `downgrade`, sent to the cheaper "
            "model or the other server the rule names (the local model server) past the rule's level; by the scope "
            f"and window whose limit decided. {WHERE}",
            (q.total(q.rate(decisions), names.GUARD_DECISION, names.GUARD_SCOPE, names.GUARD_WINDOW), legend),
            unit="reqps", stacked=True),
        bargauge_panel(
            "At the limit over the range: calls shortened and moved",
            "How many calls over the selected range were shortened to fit what remained (`fit`) or moved to a "
            f"cheaper model or server (`downgrade`), by scope and window: calls served instead of refused. {WHERE}",
            q.total(q.increase(decisions), names.GUARD_DECISION, names.GUARD_SCOPE, names.GUARD_WINDOW), legend,
            decimals=0)])]
