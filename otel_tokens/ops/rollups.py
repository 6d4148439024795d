"""The rolling window's rules: exact usage over a rolling window at a cost that grows with the number
of principals, not with the raw samples in the window, and without subqueries over the window (a
subquery evaluates its inner expression at every step: 288 lookups per user per evaluation).

- A first-level rollup, over raw data only (so `promtool tsdb create-blocks-from rules` can backfill
  it), in its own group evaluated every minute, written once per aligned 5-minute bucket: only the
  evaluation that falls WRITE_FROM..WRITE_UNTIL after a boundary writes the exact usage of the bucket
  that ended on it (the other evaluations write nothing). So a rollup series holds one sample per
  bucket, and the bucket ending at boundary E is the sample stamped in [E + 30 s, E + 90 s).
- The window: a plain `sum_over_time(rollup[24h])` (one sample per bucket, no subquery), corrected at
  its old edge, plus from raw data what each series added since the newest boundary whose bucket the
  rollup holds (the latest boundary, or the one before until the latest bucket's rollup is written).

The rolling 24 h starts on the latest 5-minute boundary at least 24 h ago (it spans 24 h to 24 h 5 m).
At x seconds after a boundary B, `[24h]` reads samples stamped from B + x - 24 h: for x < EDGE_SWITCH it
may still hold the bucket that ended at B - 24 h (outside the window; stamped within 90 s of it), which
EDGE subtracts, read from the first 2 minutes of the range; from EDGE_SWITCH on it cannot. Likewise the
newest bucket's rollup, if written, is stamped within [B + 30 s, B + x]: looked for in the last 2
minutes before EDGE_SWITCH, in the last 4 m 30 s after. These hold for any phase of the rollup group
within the minute, so backfilled and live rollups, or a group whose phase changed, add up exactly.

One missed evaluation of the rollup group loses that bucket from the window for 24 h (its rollup is
never written; the raw part stands in for it only until the next boundary). A missed
evaluation of the window's own group costs nothing (the next one recomputes it all).
"""

from __future__ import annotations

from collections.abc import Sequence

from otel_tokens.ops.durations import duration_seconds, human_duration
from otel_tokens.quota.vocabulary import COUNTERS, QuotaScope

BUCKET = "5m"
BUCKET_SECONDS = 300
ROLLUP_INTERVAL = "1m"
WRITE_FROM = 30  # seconds after a boundary: scrapes stamped before it have landed
WRITE_UNTIL = WRITE_FROM + 60  # one rollup evaluation a minute falls in [30 s, 90 s)
EDGE_SWITCH = 150  # seconds after a boundary; any value in [WRITE_UNTIL, BUCKET + WRITE_FROM - EDGE_RANGE]
EDGE_RANGE = 120
LOOKBACK = "10m"  # for each raw series' latest value and its value at a boundary: longer than a bucket


def usage_over(counter: str, label: str, window: str, by: Sequence[str] = ()) -> str:
    """Sum by principal of what the counter grew by over the window, exactly where PromQL can.

    `increase()` extrapolates to the window's edges (+13 % seen for a user whose series is a few
    scrapes old) and drops a new series' first value, so per series: the last value minus the value
    at the window's start; a series born inside the window counts from zero; only a series that
    reset inside the window (a process restarted under the same labels) falls back to `increase()`
    plus its first value.
    """
    c = f'{counter}{{{label}!=""}}'
    reset = f"resets({c}[{window}]) > 0"
    last = f"last_over_time({c}[{window}])"
    branches = [
        f"({last} - {c} offset {window} unless {reset})",
        f"({last} unless {c} offset {window} unless {reset})",
        f"(increase({c}[{window}]) + (min_over_time({c}[{window}]) unless {c} offset {window}))",
        f"increase({c}[{window}])",
    ]
    return f"sum by ({', '.join(by or (label,))}) (\n  " + "\n  or ".join(branches) + "\n)"


def rollup_series(scope: QuotaScope, kind: str) -> str:
    return f"llm_quota:{scope.name}_{kind}:{BUCKET}"


def _seconds_into_bucket(condition: str) -> str:
    """A filter on the evaluation's time within the bucket, for `and on()`."""
    return f"(vector(time() % {BUCKET_SECONDS}) {condition})"


def rollup_rule(scope: QuotaScope, kind: str) -> dict[str, str]:
    """The first-level rollup: reads raw data only; writes once per bucket."""
    bucket = usage_over(COUNTERS[kind], scope.label, BUCKET)
    return {"record": rollup_series(scope, kind),
            "expr": (f"last_over_time(\n(\n{bucket}\n)[{BUCKET}:{BUCKET}]\n)\n"
                     f"and on() {_seconds_into_bucket(f'>= {WRITE_FROM} < {WRITE_UNTIL}')}")}


def rolling_usage(scope: QuotaScope, kind: str) -> str:
    """Usage over the rolling window: complete buckets from the rollup, and from raw data what each
    series added since the newest boundary whose bucket the rollup holds (the latest one, or the one
    before until its rollup is written). Each part is labelled so that `sum by` adds them, a missing
    part counting as zero.

    The raw part is what every evaluation reads per raw series, so it is built from as few selectors
    as exactness allows (4): each series' latest value, less its value at that boundary when it has
    one no larger (a series born since counts from zero; one that reset since counts its value since
    the reset, until the bucket's exact rollup replaces it). Both read with the same 10-minute
    lookback, so a series that died in the last 10 minutes still adds what it grew by, and one that
    died earlier is in neither."""
    label = scope.label
    c = f'{COUNTERS[kind]}{{{label}!=""}}'
    rollup = rollup_series(scope, kind)
    window = duration_seconds(scope.window)
    early, late = _seconds_into_bucket(f"< {EDGE_SWITCH}"), _seconds_into_bucket(f">= {EDGE_SWITCH}")
    buckets = f"sum_over_time({rollup}[{scope.window}])"
    edge = (f"-(\n  sum_over_time({rollup}[{human_duration(EDGE_RANGE)}] offset "
            f"{human_duration(window - EDGE_RANGE)})\n  and on() {early}\n)")
    written = (f"(last_over_time({rollup}[{human_duration(EDGE_SWITCH - WRITE_FROM)}]) and on() {early})\n"
               f"  or (last_over_time({rollup}[{human_duration(BUCKET_SECONDS - WRITE_FROM)}]) and on() {late})")
    last = f"last_over_time({c}[{LOOKBACK}])"
    at_latest = f"last_over_time({last}[{BUCKET}:{BUCKET}])"  # at the latest boundary
    at_previous = f"last_over_time({last}[{BUCKET}:{BUCKET}] offset {BUCKET})"  # at the one before
    # per series, its value at the newest boundary whose bucket the rollup holds for its user
    at_base = (f"(\n  ({at_latest} and on({label}) (\n  {written}\n  ))\n"
               f"  or ({at_previous} unless on({label}) (\n  {written}\n  ))\n)")
    base = f"-sum by ({label}) (\n{at_base}\n<= {last}\n)"
    parts = ((buckets, "buckets"), (edge, "edge"), (f"sum by ({label}) ({last})", "latest"), (base, "base"))
    body = "\nor ".join(f'label_replace(\n{expr},\n"part", "{name}", "", "")' for expr, name in parts)
    return f"sum by ({label}) (\n{body}\n)"
