"""Fitting a call to what remains: where a call's worst case would cross a budget window but its input fits, its
output limit is lowered to the room left (per choice), so the call goes through and cannot overshoot, instead of
being refused with budget left. Computed from the refusing window's verdict; the fitted call is reserved again,
and another window may lower it further (each pass only lowers it)."""

from __future__ import annotations

import math
from collections.abc import Callable

from otel_tokens.quota import vocabulary
from otel_tokens.quota.budget.records import Verdict
from otel_tokens.quota.calendar import RATE_WINDOWS

# (input tokens, output tokens) -> nano-units of the call's model
Pricer = Callable[[int, int], int]
PRICE_PROBE = 1_000_000  # output tokens priced at once: the per-token price without rounding to nothing


# The exact count near a limit (a chat template, ~ms) is skipped where it cannot help, so a hostile prompt near its
# limit costs a byte count, not a tokenization: over a MiB, or with a token room under a 16th of its bytes (no
# tokenizer packs 16 bytes per token on real text). Skipping only keeps the byte bound: never an overshoot.
EXACT_MAX_BYTES = 1 << 20
BYTES_PER_TOKEN_MAX = 16


def worth_counting(verdict: Verdict, input_bound: int) -> bool:
    """Whether counting the prompt exactly could let a call refused on its byte bound through."""
    charge = verdict.charge
    if charge is None or (charge.window or charge.scope.window) in RATE_WINDOWS or input_bound > EXACT_MAX_BYTES:
        return False
    if verdict.quota != vocabulary.TOKENS:
        return True
    refuse = charge.refuse if charge.refuse is not None else 1.0
    return (math.floor(verdict.limit * refuse) - verdict.used) * BYTES_PER_TOKEN_MAX >= input_bound


def fitted_output(verdict: Verdict, input_bound: int, output_bound: int, choices: int, pricer: Pricer) -> int | None:
    """The output tokens per choice that fit the refusing window (at most what was asked), or None: not a budget
    window, the input alone does not fit, or no output price to convert a cost room into tokens."""
    charge = verdict.charge
    if charge is None or (charge.window or charge.scope.window) in RATE_WINDOWS:
        return None  # the minute and the calls in flight protect a GPU: a request is a request
    refuse = charge.refuse if charge.refuse is not None else 1.0
    room = math.floor(verdict.limit * refuse) - verdict.used  # what this call may add, in the window's unit
    choices = max(1, choices)
    if verdict.quota == vocabulary.TOKENS:
        output = room - input_bound
    else:
        per_token = pricer(0, PRICE_PROBE) / PRICE_PROBE
        if per_token <= 0:
            return None
        output = math.floor((room - pricer(input_bound, 0)) / per_token)
    per_choice = min(output // choices, output_bound // choices)
    return per_choice if per_choice > 0 else None
