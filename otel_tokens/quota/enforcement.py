"""The one thing the recorder talks to about quotas: `admit` a call before it is sent, `settle` it after.

Behind it, the two modes of the design contract: alert mode (alert/: follows the ruler's alerts, a
dictionary lookup per call) and budget mode (budget/: reserves the call's worst case in a shared store,
settles to its true usage). The unattributed policy and the `llm.guard.decisions` counter live here too,
so every decision is counted at one place with its `decision`, `scope` and `window`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from opentelemetry.metrics import Meter

from otel_tokens import names
from otel_tokens.config.settings import Endpoint, Settings
from otel_tokens.logs import internal_error
from otel_tokens.pricing import Cost, PriceBook
from otel_tokens.quota import vocabulary
from otel_tokens.quota.alert.mode import AlertMode
from otel_tokens.quota.audit_trail import AuditTrail
from otel_tokens.quota.budget.mode import BudgetMode, Held
from otel_tokens.quota.decision import Decision, QuotaExceededError
from otel_tokens.recording.call import UsageEstimate, _worst_case
from otel_tokens.text import valid_text

NONE = "none"  # the `scope` / `window` label of a decision no scope made (fail_open, fail_closed)


@dataclass(slots=True)
class Admission:
    """What the guard made of one call: the model to send it to, the decision (None: allowed as asked),
    what budget mode holds for it, and the worst case it computed (so the call does not compute it again)."""

    model: str
    decision: Decision | None = None
    held: Held | None = None
    # the worst case: as given (a function, computed only if needed) until budget mode computes it
    estimate: Callable[[], UsageEstimate | None] | UsageEstimate | None = None
    output_limit: int | None = None  # `fit`: the output limit per choice the call is sent with
    endpoint: Endpoint | None = None  # the server a downgrade sends the call to instead of the caller's

    @property
    def refusal(self) -> QuotaExceededError | None:
        decision = self.decision
        return decision.error() if decision is not None and decision.action in vocabulary.REFUSALS else None


class Enforcement:
    def __init__(self, settings: Settings, prices: PriceBook, meter: Meter) -> None:
        guard = settings.guard
        self.alert = AlertMode(guard)
        self.budget = BudgetMode(guard, prices) if guard.budget.enabled else None
        self.audit = AuditTrail(settings.audit_log)  # refusals and reloads; off without a path
        if self.budget is not None:
            self.budget.audit = self.audit
        self._reject_unattributed = settings.unattributed == vocabulary.REJECT
        # the app scope's principal: this process's service.name, the same on every call
        # spelled as the counters' service_name label (and the collector's) spells it: the rules key on that
        self.app = valid_text(settings.app) if settings.app else names.UNATTRIBUTED
        # the app joins the call's principals only where something reads it (a dict copy per call otherwise)
        self._with_app = self.budget is not None or any(r.scope == vocabulary.APP.name for r in guard.rules)
        # nothing to decide: admit() returns at once (the common, unguarded deployment)
        self.idle = not (guard.alert.enabled or self.budget is not None or self._reject_unattributed)
        self._decisions = meter.create_counter(
            names.METRIC_GUARD_DECISIONS, unit=names.UNIT_DECISION,
            description="Quota guard decisions other than allow: reject, downgrade, fail_open, fail_closed.")

    def admit(self, provider: str, model: str, attribution: Mapping[str, str], attributed: bool,
              estimate: Callable[[], UsageEstimate | None] | None, downgradable: bool) -> Admission:
        """Alert mode's decision, then budget mode's reservation (judged on the model alert mode chose).
        `attributed`: the call's own sources named a user (`unattributed: reject` refuses it otherwise).
        May raise (an internal failure): the caller releases what the Admission it never got would hold."""
        decision: Decision | None = None
        if self._with_app:
            attribution = {**attribution, names.SERVICE_NAME: self.app}
        if self._reject_unattributed and not attributed:
            decision = Decision(vocabulary.REJECT, vocabulary.UNATTRIBUTED_CALLS)
            self.count(decision)
        elif self.alert.enabled:
            decision = self.alert.decide(model if downgradable else None, attribution)
            self.count(decision)
            self._audit(decision, model)
        admission = Admission(decision.model if decision is not None and decision.model else model, decision,
                              estimate=estimate, endpoint=decision.endpoint if decision is not None else None)
        if self.budget is not None and (decision is None or decision.action not in vocabulary.REFUSALS):
            worst = admission.estimate = _worst_case(estimate)  # once: the call keeps the value, not the function
            served = (admission.endpoint.provider if admission.endpoint else None) or provider
            reserved, admission.held = self.budget.reserve(served, admission.model, attribution, worst,
                                                           downgradable and admission.endpoint is None)
            self.count(reserved)
            self._audit(reserved, model)
            if reserved is not None:
                admission.decision = reserved
                if reserved.model is not None:
                    admission.model, admission.endpoint = reserved.model, reserved.endpoint
                if reserved.action == vocabulary.FIT:
                    admission.output_limit = reserved.entry.get("max_output_tokens")
        return admission

    def settle(self, held: Held, tokens: int, cost: Cost | None, unfinished: bool, sent: bool = True) -> None:
        """Budget mode: the call's true usage replaces its reservation (queued, off the call path). An
        unfinished stream settles at least what was reserved: the server may have generated all of it. `sent`
        False: the call was refused (fail_closed), so no request reached a server (the minute counts none)."""
        if self.budget is None:
            return
        try:
            self.budget.settle(held, tokens, cost.total if cost is not None else None, at_least_reserved=unfinished,
                               sent=sent)
        except Exception:
            internal_error("budget settle")

    def release(self, held: Held) -> None:
        """A reservation whose call never started (an internal failure after admit)."""
        if self.budget is not None:
            self.budget.settle(held, 0, None, sent=False)

    def _audit(self, decision: Decision | None, model: str) -> None:
        if decision is not None and decision.action == vocabulary.REJECT and self.audit.path is not None:
            self.audit.refused(decision, model, self.app)

    def count(self, decision: Decision | None) -> None:
        if decision is not None:
            try:
                self._decisions.add(1, {names.GUARD_DECISION: decision.action,
                                        names.GUARD_SCOPE: decision.scope or NONE,
                                        names.GUARD_WINDOW: decision.window or NONE})
            except Exception:
                internal_error("guard decision counter")

    def start(self) -> None:
        """Background work: alert mode's polling, budget mode's settlements and reloads."""
        self.alert.start()
        if self.budget is not None:
            self.budget.start()

    def close(self) -> None:
        self.alert.stop()
        if self.budget is not None:
            self.budget.close()
        self.audit.flush()
