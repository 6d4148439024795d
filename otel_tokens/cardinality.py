"""Caps the distinct values of each attribution dimension that become metric labels.

A flood of distinct users must not blow up the metrics backend: past the cap, new values fold
into `__other__` (one warning per dimension), so totals stay right. Spans keep the real values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import OTHER_VALUE
from .safety import log_once


class LabelGuard:
    def __init__(self, dimensions: Sequence[str], limit: int) -> None:
        self.dimensions = tuple(dimensions)
        self.limit = limit
        self._seen: list[set[Any]] = [set() for _ in self.dimensions]
        self.folded_calls: list[int] = [0 for _ in self.dimensions]

    def apply(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """The values to use as labels; callers hold the accounting lock."""
        out: list[Any] | None = None
        for i, value in enumerate(values):
            if value is None:
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

    def distinct(self) -> dict[str, int]:
        return {dim: len(seen) for dim, seen in zip(self.dimensions, self._seen, strict=True)}

    def folded(self) -> dict[str, int]:
        return dict(zip(self.dimensions, self.folded_calls, strict=True))

    def reset(self) -> None:
        for seen in self._seen:
            seen.clear()
        self.folded_calls = [0 for _ in self.dimensions]
