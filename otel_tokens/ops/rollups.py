"""The rolling window's rules: exact usage over a rolling window at a cost that grows with the number
of principals, not with the raw samples in the window.

PromQL subquery steps are aligned to absolute multiples of the step, which makes aligned buckets
possible without any state:

- a first-level rollup, over raw data only (so `promtool tsdb create-blocks-from rules` can backfill
  it), in its own group with a slow interval: the exact usage of the aligned 5-minute bucket that ended
  at the latest boundary at least OFFSET ago (`last_over_time(<usage over 5m>[5m:5m] offset 30s)`);
- the window: the rollup read at the aligned points of the window (`sum_over_time(rollup[W-5m:5m])`,
  every complete bucket but the newest), plus, from raw data, the newest complete bucket (its usage at
  the latest boundary) and what each series added since that boundary.

So the rolling 24 h starts on the latest 5-minute boundary at least 24 h ago (it spans 24 h to 24 h 5 m)
and a crossing is seen at the next evaluation of the 10 s group, from raw data. At the aligned point u,
only a rollup sample written in [u-270 s, u] is read, and it holds the bucket that ended at u-5m (a bucket
without usage has no sample, and an older one must not stand in for it): with a 1-minute rollup interval,
up to three consecutive missed rollup evaluations cost nothing; a missed evaluation of
the window's own group costs nothing either (the next one recomputes it all).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..quota_scopes import COUNTERS, QuotaScope
from .durations import duration_seconds, human_duration

BUCKET = "5m"
BUCKET_SECONDS = 300
OFFSET = "30s"  # a rollup evaluated exactly on a boundary still means the bucket before it
ROLLUP_INTERVAL = "1m"


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


def rollup_rule(scope: QuotaScope, kind: str) -> dict[str, str]:
    """The first-level rollup: reads raw data only."""
    bucket = usage_over(COUNTERS[kind], scope.label, BUCKET)
    return {"record": rollup_series(scope, kind),
            "expr": f"last_over_time(\n(\n{bucket}\n)[{BUCKET}:{BUCKET}] offset {OFFSET}\n)"}


def rolling_usage(scope: QuotaScope, kind: str) -> str:
    """Usage over the rolling window: complete buckets from the rollup, the newest bucket and the
    current partial one from raw data. Each part is labelled so that `sum by` adds them, a missing part
    counting as zero."""
    label = scope.label
    c = f'{COUNTERS[kind]}{{{label}!=""}}'
    # left-closed ranges (Prometheus 2.x): one second short, so a boundary point is not read twice
    buckets_range = human_duration(duration_seconds(scope.window) - BUCKET_SECONDS - 1)
    last = f"last_over_time({c}[{BUCKET}])"  # also a series that died since its last sample
    # each series' value at the latest boundary; ranges ignore staleness, so a series that died
    # shortly before the boundary still has its last value here (and adds nothing since)
    at_boundary = f"last_over_time({last}[{BUCKET}:{BUCKET}])"
    newest = f"last_over_time(\n(\n{usage_over(COUNTERS[kind], label, BUCKET)}\n)[{BUCKET}:{BUCKET}]\n)"
    # per series since the latest boundary: grew since (alive or died since); born since; reset since
    since = (f"sum by ({label}) (\n  ({last} - {at_boundary} >= 0)\n"
             f"  or ({last} unless {at_boundary})\n  or {last}\n)")
    # at each aligned point only a rollup sample written since the previous boundary + OFFSET: a bucket
    # without usage has no rollup sample, and a plain lookup would read the previous bucket again
    fresh = f"last_over_time({rollup_series(scope, kind)}[{human_duration(BUCKET_SECONDS - duration_seconds(OFFSET))}])"
    parts = ((f"sum_over_time({fresh}[{buckets_range}:{BUCKET}])", "buckets"),
             (newest, "newest"), (since, "since"))
    body = "\nor ".join(f'label_replace(\n{expr},\n"part", "{name}", "", "")' for expr, name in parts)
    return f"sum by ({label}) (\n{body}\n)"

