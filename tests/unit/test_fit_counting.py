"""When budget mode counts a prompt exactly near a limit (budget/fit.py `worth_counting`): only where the count
could let the call through, so a hostile prompt near its limit costs a byte count, never a tokenization."""

from __future__ import annotations

from otel_tokens.quota.budget.fit import worth_counting
from otel_tokens.quota.budget.records import REFUSED, Charge, Verdict
from otel_tokens.quota.vocabulary import USER


def _refused(used: int, limit: int = 1000, quota: str = "tokens", window: str = "") -> Verdict:
    return Verdict(REFUSED, Charge(USER, "ann", 0, 0, window=window), quota, used, 0, limit)


def test_a_prompt_is_counted_only_where_its_tokens_could_fit_the_room():
    assert worth_counting(_refused(used=900), 1_600)  # 100 tokens left: a 1,600-byte prompt may hold under 100
    assert not worth_counting(_refused(used=900), 1_601)  # over 16 bytes per token of room: cannot fit, not counted
    assert not worth_counting(_refused(used=1000), 10)  # no room at all
    assert not worth_counting(_refused(used=0, limit=10**9), (1 << 20) + 1)  # over a MiB: never tokenized
    assert worth_counting(_refused(used=0, quota="cost", limit=10**9), 50_000)  # a cost room: the byte cap only
    assert not worth_counting(_refused(used=0, window="minute"), 10)  # a rate limit is never fitted
