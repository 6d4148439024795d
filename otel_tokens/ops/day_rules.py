"""A user's calendar day in the rules, in the quota file's zone, exact, at about the cost per evaluation of the
rolling 24 h (it reuses that window's 5-minute rollups and parts, and reads the raw series as it does):

- *closed part*, written with the window's parts (same rule, same commit, as of the latest boundary B): the
  rollups of the buckets of the local day holding the bucket that ended at K (B's previous boundary). Inside a
  `[26h:5m]` subquery each step S reads the bucket that ended at S - 5 min and labels it with that bucket's
  local day (the offset of its own time: exact on DST days); only the wanted day's are summed, and the label
  is dropped before the part is written (no series per day). A principal whose previous day part was above 0
  and who has no bucket today gets 0, so the part read back over 15 minutes is never yesterday's.
- *live part*, every evaluation: what each raw series added since K (the window's own growth terms), less the
  buckets of the day before that this growth holds when local midnight M fell after K (at most two, each
  read at its boundary through a `[5m:5m]` step). In the 90 s after M the bucket ending at M is not written
  yet: the growth is left out then, so the day shows nothing for up to 90 s after local midnight (a lag, never
  yesterday's usage in today's alert). The closed part counts only while its day is today.

Days begin at local midnight on a 5-minute boundary in every zone (offsets are whole quarter hours), so
Asia/Kolkata and Asia/Kathmandu are exact too.
"""

from __future__ import annotations

from functools import partial

from otel_tokens.ops.local_time import LocalTime
from otel_tokens.ops.rollups import (
    BUCKET,
    BUCKET_SECONDS,
    PARTS_FRESH,
    PARTS_KEPT,
    WRITE_UNTIL,
    growth_terms,
    newest_part,
    parts_series,
    rollup_series,
)
from otel_tokens.quota.calendar import DAY, calendar_id
from otel_tokens.quota.vocabulary import QuotaScope

DAY_SPAN = "26h"  # longer than any local day (Antarctica/Troll's are 26 h on its DST days)


def day_part(scope: QuotaScope, kind: str, local: LocalTime) -> tuple[str, str]:
    """(expression as of B, "day") for parts_rule: the rollups of the local day of the bucket that ended at K."""
    rollup = rollup_series(scope, kind)
    bucket_day = calendar_id(DAY, local.seconds(f"time() - {BUCKET_SECONDS + 1}"))  # the bucket ending at S - 5m
    labelled = (f"last_over_time({rollup}[{BUCKET}])\n"
                f"+ on() group_left(day) (0 * count_values(\"day\", {bucket_day}))")
    # 0 for every principal the previous write gave a day part above 0: read every 10 s over PARTS_KEPT, an
    # older write's (yesterday's, for a principal without a bucket today) must never be the newest
    parts = parts_series(scope, kind)
    previous = f'0 * sum by ({scope.label}) (last_over_time({parts}{{part="day"}}[{PARTS_FRESH}]) > 0)'
    return (f"sum without (day) (\n  sum_over_time(\n(\n{labelled}\n)[{DAY_SPAN}:{BUCKET}]\n  )\n"
            f"  and on(day)\n  count_values(\"day\", {bucket_day})\n)\nor {previous}", "day")


def day_usage(scope: QuotaScope, kind: str, local: LocalTime) -> str:
    """The user's usage since local midnight, every evaluation (see the module's docstring)."""
    label = scope.label
    newest = partial(newest_part, scope, kind)
    rollup = rollup_series(scope, kind)

    def day_of(utc: str) -> str:
        return calendar_id(DAY, local.seconds(utc))

    today = day_of("time()")
    k = f"scalar({newest('boundary', PARTS_KEPT)})"
    boundary = f"(time() - time() % {BUCKET_SECONDS})"  # B

    settled = f"({day_of(f'time() - {WRITE_UNTIL}')} == {today})"  # local midnight is not within the last 90 s

    def bucket_before_midnight(back: int, name: str) -> str:
        """The bucket that ended `back` boundaries before B, when it ended after K and before today began:
        read at its boundary (the step of a `[5m:5m]` subquery), the sample stamped 30-90 s after it."""
        end = f"({boundary} - {back * BUCKET_SECONDS})"
        read = f"last_over_time(last_over_time({rollup}[{BUCKET}] offset -{BUCKET_SECONDS - 60}s)[{BUCKET}:{BUCKET}]"
        read += f" offset {back * BUCKET_SECONDS}s)" if back else ")"
        return (f"-(\n{read}\n+ on() group_left(part) label_replace(vector(0), \"part\", \"{name}\", \"\", \"\")\n"
                f"and on() (vector({end}) > {k})\nand on() ({day_of(f'{end} - 1')} != {today})\nand on() {settled}\n)")

    terms = [f"(\n{newest('day', PARTS_KEPT)}\nand on() ({day_of(f'{k} - 1')} == {today})\n)",
             *growth_terms(scope, kind, settled),
             bucket_before_midnight(0, "b0"),
             bucket_before_midnight(1, "b1")]
    return f"sum by ({label}) (\n" + "\nor ".join(terms) + "\n)"
