"""Keeps the accounting metrics' label sets bounded, in one place.

Two limits: a cap on the distinct values of each attribution dimension (a flood of users must not
blow up the metrics backend: past it new values fold into `__other__`, one warning per dimension),
and the OTel SDK reader's cardinality limit per metric (past it the SDK lumps new label sets into
one unlabelled overflow series, losing departments; folding the first dimension, the user, before
that keeps the other labels right). Totals stay right either way; spans keep the real values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from otel_tokens.config.settings import DEFAULT_SERIES_LIMIT, OTHER_VALUE
from otel_tokens.logs import log_once
from otel_tokens.names import UNATTRIBUTED


class DimensionValueCap:
    """At most `limit` distinct values per attribution dimension become labels."""

    def __init__(self, dimensions: Sequence[str], limit: int) -> None:
        self.dimensions = tuple(dimensions)
        self.limit = limit
        self._seen: list[set[Any]] = [set() for _ in self.dimensions]
        self.folded_calls: list[int] = [0 for _ in self.dimensions]

    def apply(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """The values to use as labels; callers hold the accounting lock. `__unattributed__` is never
        folded nor counted: it must keep its own series for its quota to be enforced."""
        out: list[Any] | None = None
        for i, value in enumerate(values):
            if value is None or value == UNATTRIBUTED:
                continue
            seen = self._seen[i]
            if value in seen:
                continue
            if len(seen) < self.limit:
                seen.add(value)
                continue
            if out is None:
                out = list(values)
            out[i] = OTHER_VALUE
            self.folded_calls[i] += 1
            log_once(f"fold:{self.dimensions[i]}",
                     "otel-tokens: more than %d distinct values of %s; further values are counted as %r "
                     "in metrics (spans keep the real value). Raise cardinality_limit if this is expected.",
                     self.limit, self.dimensions[i], OTHER_VALUE)
        return values if out is None else tuple(out)

    def known(self, values: tuple[Any, ...]) -> bool:
        """Whether every value already has its place (never taking one); callers hold the lock."""
        return all(value is None or value == UNATTRIBUTED or value in seen
                   for value, seen in zip(values, self._seen, strict=True))

    def distinct(self) -> dict[str, int]:
        return {dim: len(seen) for dim, seen in zip(self.dimensions, self._seen, strict=True)}

    def folded(self) -> dict[str, int]:
        return dict(zip(self.dimensions, self.folded_calls, strict=True))

    def reset(self) -> None:
        for seen in self._seen:
            seen.clear()
        self.folded_calls = [0 for _ in self.dimensions]


class SeriesCap:
    """Keeps every accounting metric under the SDK reader's series limit, folding as little as needed:
    the first dimension (user), then all of them. The reserve leaves room for the folded series."""

    def __init__(self, dimensions: Sequence[str], limit: int = DEFAULT_SERIES_LIMIT) -> None:
        self.dimensions = tuple(dimensions)
        self.limit = limit
        self.soft_limit = soft_limit(limit)
        self.folded_calls = 0

    def near(self, usage_series: int, request_series: int) -> bool:
        """Whether a new label set may not fit any more (two token types per usage entry)."""
        return 2 * usage_series >= self.soft_limit or request_series >= self.soft_limit

    def fit(self, base: tuple[Any, ...], error_type: str | None, dims: tuple[Any, ...],
            usage: Mapping[tuple[Any, ...], Any], requests: Mapping[tuple[Any, ...], Any]) -> tuple[Any, ...]:
        """dims, folded as little as needed; callers hold the accounting lock."""
        candidates = [dims, (fold_value(dims[0]), *dims[1:]), tuple(map(fold_value, dims))]
        for i, candidate in enumerate(candidates):
            limit = self.soft_limit if i == 0 else self.limit
            key = base + candidate
            fits = ((key in usage or 2 * len(usage) < limit)
                    and ((*key, error_type) in requests or len(requests) < limit))
            if fits or i == len(candidates) - 1:
                if i:
                    self.folded_calls += 1
                    log_once("series-limit", "otel-tokens: accounting metrics reached %d label sets (the SDK "
                             "metric reader's cardinality limit is %d); new %s values are counted as %r. Raise "
                             "the reader's cardinality limit and series_limit if this is expected.",
                             self.soft_limit, self.limit, self.dimensions[0], OTHER_VALUE)
                return candidate
        return dims


def soft_limit(limit: int) -> int:
    """Where folding starts: a reserve under the SDK's limit leaves room for the folded series."""
    return max(1, limit - min(100, limit // 10))


def fold_value(value: Any) -> Any:
    """What a folded label value becomes: `__other__`, except `__unattributed__`, which keeps its quota."""
    return value if value == UNATTRIBUTED else OTHER_VALUE
