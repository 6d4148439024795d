"""The per-principal usage counters, `llm.quota.tokens` and `llm.quota.cost`: what the quota rules read.

The accounting counters carry a series per model, token type, operation and source; a quota only needs
the principal's total, and the rules' cost grows with the series they read. So the call path keeps one
more entry per label set of the attribution dimensions (same lock, same collection snapshot as the
accounting counters, so both agree), bounded by the SDK reader's series limit on its own: a user past it
folds into `__other__` with the department kept, as the accounting metrics fold."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.metrics import Observation

from otel_tokens import names
from otel_tokens.config.settings import OTHER_VALUE
from otel_tokens.logs import log_once
from otel_tokens.recording.cardinality import fold_value, soft_limit

# Per principal: tokens, cost, whether a cost was seen.
_TOKENS, _COST, _HAS_COST = range(3)


class PrincipalUsage:
    """Totals per label set of the attribution dimensions; callers hold the accounting lock."""

    def __init__(self, dimensions: Sequence[str], series_limit: int, currency: str,
                 constant: tuple[tuple[str, Any], ...] = ()) -> None:
        self.dimensions = tuple(dimensions)
        self.limit = series_limit
        self.soft_limit = soft_limit(series_limit)
        self.totals: dict[tuple[Any, ...], list[Any]] = {}
        self.folded_calls = 0
        self._currency = ((names.CURRENCY, currency),)
        self._constant = dict(constant)  # the app (service.name)
        self._attrs: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._cost_attrs: dict[tuple[Any, ...], dict[str, Any]] = {}

    def add(self, dims: tuple[Any, ...], tokens: int, cost: float | None) -> None:
        totals = self.totals
        entry = totals.get(dims)
        if entry is None:
            if len(totals) >= self.soft_limit:
                dims = self._fold(dims)
                entry = totals.get(dims)
            if entry is None:
                entry = totals[dims] = [0, 0.0, False]
        entry[_TOKENS] += tokens
        if cost is not None:
            entry[_COST] += cost
            entry[_HAS_COST] = True

    def _fold(self, dims: tuple[Any, ...]) -> tuple[Any, ...]:
        """The user folded, then every dimension, as little as the limit needs (the reserve holds the folds)."""
        user_folded = (fold_value(dims[0]), *dims[1:])
        everything = tuple(map(fold_value, dims))
        self.folded_calls += 1
        log_once("quota-series-limit", "otel-tokens: llm.quota.* reached %d principals in this process (the SDK "
                 "metric reader's limit is %d); new %s values are counted as %r there and their quota rules cannot "
                 "see them (budget mode is unaffected). Set OTEL_TOKENS_SERIES_LIMIT above the principals per "
                 "process.", self.soft_limit, self.limit, self.dimensions[0], OTHER_VALUE)
        if user_folded in self.totals or len(self.totals) < self.limit - 1:
            return user_folded
        return everything

    def snapshot(self) -> list[tuple[tuple[Any, ...], list[Any]]]:
        return [(dims, list(entry)) for dims, entry in self.totals.items()]

    def _labels(self, dims: tuple[Any, ...]) -> dict[str, Any]:
        attrs = self._attrs.get(dims)
        if attrs is None:
            attrs = self._attrs[dims] = {**{k: v for k, v in zip(self.dimensions, dims, strict=True) if v is not None},
                                         **self._constant}
        return attrs

    def token_observations(self, snapshot: Iterable[tuple[tuple[Any, ...], list[Any]]]) -> list[Observation]:
        return [Observation(entry[_TOKENS], self._labels(dims)) for dims, entry in snapshot]

    def cost_observations(self, snapshot: Iterable[tuple[tuple[Any, ...], list[Any]]]) -> list[Observation]:
        out = []
        for dims, entry in snapshot:
            if entry[_HAS_COST]:
                attrs = self._cost_attrs.get(dims)
                if attrs is None:
                    attrs = self._cost_attrs[dims] = {**self._labels(dims), **dict(self._currency)}
                out.append(Observation(entry[_COST], attrs))
        return out

    def reset(self) -> None:
        self.totals.clear()
        self.folded_calls = 0

