"""The rolling window's rules: exact usage over a rolling window at a cost per evaluation that grows with
the principals and their live series, not with the samples in the window.

- A first-level rollup, over raw data only (so `promtool tsdb create-blocks-from rules` can backfill
  it), in its own group evaluated every minute, written once per aligned 5-minute bucket: only the
  evaluation that falls WRITE_FROM..WRITE_UNTIL after a boundary writes the exact usage of the bucket
  that ended on it. So a rollup series holds one sample per bucket, and the bucket ending at boundary E
  is the sample stamped in [E + 30 s, E + 90 s). The work is done inside a subquery whose window holds
  the boundary only around that evaluation (`_at_boundary`): the others select the series and stop.
- In a group of its own every 5 minutes (PARTS_INTERVAL, at any phase), one rule records the window's
  parts as of the boundary K before the latest one B (one rule, so one commit: a reader never sees parts
  of two boundaries mixed): per principal the sum of the 288 buckets of the 24 h ending at K (`window`)
  and its two oldest buckets (`drop`, `drop2`), per raw series its value at K (`base`), and K itself
  (`boundary`). Summing 288 buckets per principal happens once per bucket, not at every evaluation of
  the window; a group of its own, because a rule gated like the rollup still selects every series at
  each evaluation of a once-a-minute group, which was most of its cost.
- While no parts are fresh, the rollup group writes each raw series' value 5 minutes ago as its base
  (`fallback_rule`).
- The window, every evaluation: the newest parts, less the buckets that have left the window since K
  (one, or two while the parts group has not yet written the parts of the latest boundary), plus from
  raw data what each series added since K: its latest value, less its value at K when it has one no
  larger (a series born since counts from zero; one that reset since counts its value since the reset).
  The terms differ by their labels (the parts' `part`, the growth by principal only) so that `sum by` over
  their union adds them, a missing term counting as zero.

The rolling 24 h starts on the latest 5-minute boundary at least 24 h ago (it spans 24 h to 24 h 5 m).
As of a boundary, the rollups stamped in the 24 h before it are exactly the buckets of the 24 h before the
previous boundary, at any phase of the rollup group within its minute, so backfilled and live rollups,
or a group whose phase changed, add up exactly.

One missed rollup evaluation loses that bucket from the window for 24 h (the raw data stands in for it
until the next boundary). Missed evaluations of the window's group cost nothing; if the parts group
writes no parts for PARTS_FRESH (or has not yet, in the 5 minutes after the rules are deployed), the window
lags, see `fallback_rule`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from otel_tokens.ops.durations import duration_seconds, human_duration
from otel_tokens.quota.calendar import HOUR_SECONDS
from otel_tokens.quota.vocabulary import COUNTERS, QuotaScope

BUCKET = "5m"
BUCKET_SECONDS = 300
HOUR = "1h"  # the departments' buckets (HOUR_SECONDS)
HOUR_WRITTEN = "15m"  # an hour's bucket is written by the evaluations in the 15 minutes after it ends
ROLLUP_INTERVAL = "1m"
HOUR_ROLLUP_INTERVAL = "4m"  # the hours' group: 3-4 evaluations write each hour (a restart loses nothing)
HOUR_KEPT = "9m"  # how far back the 10 s group reads the hours' month to date: two intervals and a minute
WRITE_FROM = 30  # seconds after a boundary: scrapes stamped before it have landed
WRITE_UNTIL = WRITE_FROM + 60  # one rollup evaluation a minute falls in [30 s, 90 s)
GATE_OFFSET, GATE_RANGE = 25, 70  # a subquery window [t - 95 s, t - 25 s]: around the writing evaluation only
LOOKBACK = "15m"  # each raw series' latest value and its value at K: longer than the 10 to 11 min since K
PARTS_INTERVAL = "5m"  # the parts' group: they change once per bucket
PARTS_FRESH = "6m"  # parts written once per bucket: a base or boundary older than this is stale (missed writes)
ROLLUP_FRESH = "2m"  # the fallback is written every minute
PARTS_KEPT = "15m"  # how far back the window's sums are read: a stalled parts group makes the window lag


def usage_over(counter: str, label: str, window: str, by: Sequence[str] = ()) -> str:
    """Sum by principal of what the counter grew by over the window, exactly where PromQL can.

    `increase()` extrapolates to the window's edges (+13 % seen for a user whose series is a few
    scrapes old) and drops a new series' first value, so per series: the last value less the value at
    the window's start (the two added as labelled terms: a series born inside the window has no start and
    counts from zero; one that ended before it has no last and counts nothing); only a series that reset
    inside the window (a process restarted under the same labels) falls back to `increase()`. Four reads
    of each series: the cost of a rollup is in selecting the series, whether or not it computes.
    """
    c = f'{counter}{{{label}!=""}}'
    per_series = _labelled([(f"last_over_time({c}[{window}])", "last"), (f"-({c} offset {window})", "start")],
                           "term")
    exact = f"clamp_min(sum without (term) (\n{per_series}\n), 0)\nunless resets({c}[{window}]) > 0"
    return f"sum by ({', '.join(by or (label,))}) (\n({exact})\nor increase({c}[{window}])\n)"


def rollup_series(scope: QuotaScope, kind: str) -> str:
    return f"llm_quota:{scope.name}_{kind}:{BUCKET}"


def parts_series(scope: QuotaScope, kind: str) -> str:
    return f"llm_quota:{scope.name}_{kind}:{scope.window}_parts"


def _seconds_into_bucket(condition: str) -> str:
    """A filter on the evaluation's time within the bucket, for `and on()`."""
    return f"(vector(time() % {BUCKET_SECONDS}) {condition})"


def _writing() -> str:
    return _seconds_into_bucket(f">= {WRITE_FROM} < {WRITE_UNTIL}")


def _at_boundary(expr: str) -> str:
    """expr as of the latest boundary B, computed only by evaluations 25..95 s after it (a superset of
    the writing one): the subquery's one step is B, and the others have no step to compute."""
    return (f"last_over_time(\n(\n{expr}\n)[{human_duration(GATE_RANGE)}:{BUCKET}] "
            f"offset {human_duration(GATE_OFFSET)}\n)")


def _as_of_boundary(expr: str) -> str:
    """expr as of the latest boundary B (a subquery's one step), at every evaluation."""
    return f"last_over_time(\n(\n{expr}\n)[{BUCKET}:{BUCKET}]\n)"


def _labelled(terms: Sequence[tuple[str, str]], key: str) -> str:
    """The union of expressions, each told apart by `key` (a missing one is simply absent)."""
    return "\nor ".join(f'label_replace(\n{expr},\n"{key}", "{name}", "", "")' for expr, name in terms)


def hourly_bucket(counter: str, label: str, labels: str = "", size: int = HOUR_SECONDS) -> str:
    """The usage of the clock hour that ended on the latest hour boundary H, by the evaluations of a
    group every HOUR_ROLLUP_INTERVAL in [H, H + HOUR_WRITTEN] (their subquery's only step is H: the other
    evaluations select the series and stop, which is most of an evaluation's cost, hence 4 minutes, not 1).
    The same bucket 3 times, so a Prometheus restart in those minutes loses nothing; stamped H + 0..15 min:
    `closed_hour` reads the last back at H. `labels`, a `+ on() group_left(...) ...` term, is evaluated at
    H too (time() is H there). `size`: a half or a quarter hour in zones off whole hours (the same, per bucket)."""
    usage = usage_over(counter, label, human_duration(size)) + (f"\n{labels}" if labels else "")
    return f"last_over_time(\n(\n{usage}\n)[{HOUR_WRITTEN}:{human_duration(size)}]\n)"


def closed_hour(bucket: str, size: int = HOUR_SECONDS) -> str:
    """At an hour boundary S (a `[..:1h]` subquery's step), the hourly bucket of the hour ending at S: the
    last sample stamped S - 1 min .. S + 59 min, which holds only that bucket on either engine
    (Prometheus's ranges include their start, VictoriaMetrics's do not), written at S or up to 15 minutes
    after. At the latest boundary, empty until the bucket is written."""
    return f"last_over_time({bucket}[{human_duration(size)}] offset -{human_duration(size - 60)})"


def rollup_rule(scope: QuotaScope, kind: str) -> dict[str, str]:
    """The first-level rollup: reads raw data only; writes once per bucket."""
    bucket = usage_over(COUNTERS[kind], scope.label, BUCKET)
    return {"record": rollup_series(scope, kind), "expr": f"{_at_boundary(bucket)}\nand on() {_writing()}"}


def parts_rule(scope: QuotaScope, kind: str, extra: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """The window's parts as of the boundary K before the latest one B, in a group of their own evaluated
    every PARTS_INTERVAL (at any phase: the parts of one evaluation are all as of its K).

    As of B (inside the subquery), `[24h]` holds exactly the buckets ending at B - 24 h .. K, at any phase
    of the rollup group: a bucket's rollup is stamped 30..90 s after its end, so the one ending at
    B - 24 h - 5 m is out and the one ending at B is not yet written. That is the 24 h ending at K.
    Its two oldest buckets are recorded beside it: the window at a time after B holds neither."""
    label, rollup = scope.label, rollup_series(scope, kind)
    window = duration_seconds(scope.window)

    def bucket_ending_before(seconds: int) -> str:  # at B: the rollup of the bucket that ended `seconds` before B
        return f"sum_over_time({rollup}[2m] offset {human_duration(seconds - 120)})"

    counter = f'{COUNTERS[kind]}{{{label}!=""}}'
    # a drop is written (0 if need be) for every principal of the previous write, so that the window never
    # pairs this write's sum with an older write's drop
    users = f'0 * sum by ({label}) (last_over_time({parts_series(scope, kind)}{{part="window"}}[{PARTS_FRESH}]))'
    parts = [(f"sum_over_time({rollup}[{scope.window}])", "window"),
             (f"{bucket_ending_before(int(window))} or {users}", "drop"),
             (f"{bucket_ending_before(int(window) - BUCKET_SECONDS)} or {users}", "drop2"),
             (f"last_over_time({counter}[{LOOKBACK}] offset {BUCKET})", "base"),
             (f"vector(time() - {BUCKET_SECONDS})", "boundary"), *extra]
    return {"record": parts_series(scope, kind),
            "expr": _labelled([(_as_of_boundary(expr), name) for expr, name in parts], "part")}


def fallback_rule(scope: QuotaScope, kind: str) -> dict[str, str]:
    """While no parts younger than PARTS_FRESH exist (up to 5 minutes after the rules are deployed, or a
    stalled parts group), every minute in the rollup group: each raw series' value 5 minutes ago as its
    base (`part="base"`, as the parts write it: Prometheus drops the stale marker a rule writes for a series
    another rule wrote at that time) and when that was (`fallback_at`). The window then shows the last 5 to
    6 minutes (plus the newest parts' 24 h while they are kept): it lags, never counts a counter whole."""
    label, parts = scope.label, parts_series(scope, kind)
    counter = f'{COUNTERS[kind]}{{{label}!=""}}'
    union = _labelled([(f"last_over_time({counter}[{LOOKBACK}] offset {BUCKET})", "base"),
                       (f"vector(time() - {BUCKET_SECONDS})", "fallback_at")], "part")
    fresh = f'last_over_time({parts}{{part="boundary"}}[{PARTS_FRESH}])'
    return {"record": parts, "expr": f"(\n{union}\n)\nunless on() {fresh}"}


def rolling_usage(scope: QuotaScope, kind: str) -> str:
    """Usage over the rolling window: the newest parts (as of boundary K), less the buckets that have left
    the window since K, plus from raw data what each series added since K: its latest value, less its base
    (K's, or the fallback's while there are no fresh parts) when it has one no larger (a series born since
    counts from zero; one that reset since counts its value since the reset). No growth at all until the
    rollup group has written parts or a fallback, so a counter never counts whole. Reads each raw series
    twice (its latest value, and again to compare with its base): cheaper than one read through the
    per-series unions it takes to avoid the second (measured at 10,000 users)."""
    label = scope.label
    previous_boundary = f"vector(time() - time() % {BUCKET_SECONDS} - {BUCKET_SECONDS})"
    newest = partial(newest_part, scope, kind)
    # Told apart by their labels, not by label_replace (which cost more than the reads at 10,000 users):
    # the parts keep their `part`, the latest growth has only the principal's label.
    terms = [newest("window", PARTS_KEPT),
             f"-{newest('drop', PARTS_KEPT)}",
             f"-({newest('drop2', PARTS_KEPT)} unless on() ({newest('boundary')} == on() {previous_boundary}))",
             *growth_terms(scope, kind)]
    return f"sum by ({label}) (\n" + "\nor ".join(terms) + "\n)"


def newest_part(scope: QuotaScope, kind: str, name: str, kept: str = PARTS_FRESH) -> str:
    return f'last_over_time({parts_series(scope, kind)}{{part="{name}"}}[{kept}])'


def growth_terms(scope: QuotaScope, kind: str, gate: str = "") -> list[str]:
    """What each raw series added since the parts' boundary K (its base), as two terms of a `sum by` union:
    the latest values (principal's label only) and minus the bases no larger than them (`part="base"`).
    None until the parts or the fallback wrote a base. `gate`: a further `and on()` condition."""
    label = scope.label
    newest = partial(newest_part, scope, kind)
    counter = f'{COUNTERS[kind]}{{{label}!=""}}'
    last = f"last_over_time({counter}[{LOOKBACK}])"
    has_base = f"({newest('boundary')} or {newest('fallback_at', ROLLUP_FRESH)})"
    bases = f"sum by ({label}, part) (\n{newest('base')}\n<= ignoring(part) group_left() {last}\n)"
    # group_left: a one-to-one `ignoring(part)` drops `part` from the result (then `or` dropped the term)
    if not gate:
        return [f"(sum by ({label}) ({last})\nand on() {has_base})", f"-{bases}"]
    return [f"(sum by ({label}) ({last})\nand on() {has_base}\nand on() {gate})", f"-({bases}\nand on() {gate})"]
