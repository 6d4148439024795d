"""Driving budget mode's store directly in tests: a clock the test sets (Redis runs the scripts at that time), local
times in a zone, one call reserved and settled."""

from __future__ import annotations

from datetime import datetime

from otel_tokens.quota.budget.store import RESERVED, Charge, RedisBudgetStore, Settlement
from otel_tokens.quota.calendar import load_zone


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def local_time(zone: str, *fields: int) -> float:
    return datetime(*fields, tzinfo=load_zone(zone)).timestamp()


def use(store: RedisBudgetStore, charge: Charge, tokens: int, reservation: str) -> None:
    """One call reserved in `charge`'s window and settled at `tokens`."""
    verdict = store.reserve(reservation, 600, [charge])
    assert verdict.status == RESERVED, verdict
    store.settle([Settlement([charge], reservation, tokens, 0)])
