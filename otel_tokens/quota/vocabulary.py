"""The quota vocabulary, defined once, one word per idea: a **scope** is who a limit applies to (users over
a rolling 24 h, departments and apps per calendar month, UTC), its **window** the span a limit counts over, a
**kind** what it counts (tokens or cost: the alerts' `quota` label), an **action** what the guard does
with a call. The rule renderer, the report, the guard and the config iterate over these instead of
spelling them again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from otel_tokens import names

TOKENS, COST = "tokens", "cost"
KINDS = (TOKENS, COST)  # what a limit counts; the `quota` label of the alerts
REQUESTS = "requests"  # calls: a minute's requests, or (the `concurrent` window) calls in flight; budget mode only
BUDGET_KINDS = (TOKENS, COST, REQUESTS)
# What the quota rules read: one series per principal and process (llm.quota.*).
COUNTERS: Mapping[str, str] = {TOKENS: names.PROM_QUOTA_TOKENS, COST: names.PROM_QUOTA_COST}
# The same totals split by model, token type, operation and source: what reports break down, and the only
# history from before the per-principal counters existed (rules-backfill reads it).
ACCOUNTING_COUNTERS: Mapping[str, str] = {TOKENS: names.PROM_LLM_TOKEN_USAGE, COST: names.PROM_LLM_COST}

WARNING, CRITICAL = "warning", "critical"
SEVERITY_RANK: Mapping[str, int] = {WARNING: 1, CRITICAL: 2}

# What the guard did with a call: the `llm.quota.action` span attribute and the `decision` label
# of llm.guard.decisions (allowed calls are neither).
REJECT, DOWNGRADE, FAIL_OPEN, FAIL_CLOSED = "reject", "downgrade", "fail_open", "fail_closed"
FIT = "fit"  # budget mode: the call's output limit lowered to what remains (quota/budget/fit.py)
ACTIONS = (REJECT, DOWNGRADE, FIT, FAIL_OPEN, FAIL_CLOSED)
# what a guard rule in the config may ask for; `fit` refuses as `reject` where a call cannot be fitted (and in
# alert mode, which knows no remaining budget)
RULE_ACTIONS = (REJECT, DOWNGRADE, FIT)
REFUSALS = (REJECT, FAIL_CLOSED)  # the actions that refuse the call
# The scope of a refusal under `unattributed: reject` (a call with no user), beside the scope names.
UNATTRIBUTED_CALLS = "unattributed"
ALLOW = "allow"
UNATTRIBUTED_POLICIES = (ALLOW, REJECT)


@dataclass(frozen=True)
class QuotaScope:
    name: str  # "user": a guard rule's `scope:`, the `scope` label of llm.guard.decisions
    section: str  # "users": the quota file's key, the guard state's key
    attribute: str  # who it is on a call: names.USER_ID
    window: str  # the `window` label of the alerts and of llm.guard.decisions: "24h" (rolling) or "month"
    alerts: Mapping[str, str]  # kind -> alertname
    titles: Mapping[str, str]  # kind -> what the alert text calls the limit

    @property
    def label(self) -> str:
        """The Prometheus label that carries the principal: user_id, department."""
        return names.prometheus_label(self.attribute)

    @property
    def rolling(self) -> bool:
        return self.window != "month"


USER = QuotaScope("user", "users", names.USER_ID, "24h",
                  {TOKENS: "LLMUserTokenQuota", COST: "LLMUserCostQuota"},
                  {TOKENS: "daily token quota", COST: "daily cost quota"})
DEPARTMENT = QuotaScope("department", "departments", names.DEPARTMENT, "month",
                        {TOKENS: "LLMDepartmentTokenBudget", COST: "LLMDepartmentCostBudget"},
                        {TOKENS: "monthly token budget", COST: "monthly cost budget"})
# The app: the service.name of the calling process (one app per process), budgeted like a department.
APP = QuotaScope("app", "apps", names.SERVICE_NAME, "month",
                 {TOKENS: "LLMAppTokenBudget", COST: "LLMAppCostBudget"},
                 {TOKENS: "monthly token budget", COST: "monthly cost budget"})
SCOPES = (USER, DEPARTMENT, APP)
BY_NAME: Mapping[str, QuotaScope] = {scope.name: scope for scope in SCOPES}
# alertname -> (scope, kind), for reading alert state back
ALERTS: Mapping[str, tuple[QuotaScope, str]] = {
    alert: (scope, kind) for scope in SCOPES for kind, alert in scope.alerts.items()}
