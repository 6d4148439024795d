"""What budget mode does per scope and where it charges a call: the guard rules' refusal and downgrade levels,
and the windows (the scope's own, and every other one the quota file sets) each call is reserved in."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from otel_tokens.config.settings import DowngradeTarget, GuardSettings
from otel_tokens.quota import vocabulary
from otel_tokens.quota.file import Quotas


@dataclass(frozen=True, slots=True)
class Plan:
    """What one scope's rules ask for: refuse above `refuse` x limit, downgrade above a ratio."""

    refuse: float | None
    downgrades: tuple[tuple[float, str, DowngradeTarget], ...] = ()  # (ratio, model glob, target), rule order
    fit: bool = False  # a call that would cross the refusal level is fitted to what remains where it can be

    def downgrade_for(self, model: str | None) -> tuple[float, DowngradeTarget] | None:
        for ratio, glob, target in self.downgrades if model else ():
            if fnmatch.fnmatch(model, glob) and target.moves(model):  # type: ignore[arg-type]
                return ratio, target
        return None


def plans(settings: GuardSettings, quotas: Quotas) -> dict[str, Plan]:
    if not settings.rules:
        return {scope.name: Plan(1.0, fit=True) for scope in vocabulary.SCOPES}  # fitted, else refused at 100 %

    def ratio(level: str) -> float:
        return quotas.warning_ratio if level == vocabulary.WARNING else 1.0

    out = {}
    for scope in vocabulary.SCOPES:
        rules = [r for r in settings.rules if r.scope == scope.name]
        refuse = [ratio(r.level) for r in rules if r.action in (vocabulary.REJECT, vocabulary.FIT)]
        downgrades = tuple((ratio(r.level), glob, target) for r in rules if r.action == vocabulary.DOWNGRADE
                           for glob, target in r.downgrade)
        out[scope.name] = Plan(min(refuse) if refuse else None, downgrades,
                               any(r.action == vocabulary.FIT for r in rules))
    return out


def windows(quotas: Quotas | None) -> dict[str, tuple[str, ...]]:
    """Scope name -> the windows a call is charged in: the scope's own first, then every other window with a
    limit anywhere in that scope."""
    return {scope.name: (scope.window, *(w for w in (quotas.scope_windows(scope, rates=True) if quotas else ())
                                         if w != scope.window)) for scope in vocabulary.SCOPES}
