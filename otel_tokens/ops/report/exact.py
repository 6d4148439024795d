"""Exact counter growth per series over a period of any length, for statements.

`rules.usage_over` is exact only where a series did not reset (a restarted app): there it falls back
to `increase()`, which extrapolates, and over a whole month a 30-day range selector also loads every
raw sample of every series at once (Prometheus's default 50 M sample limit). A statement must be
exact, so the period is cut into clock hours (the period's own edges where they are not on the hour):

- one `query_range` (step 1 h) gives, per series and hour, its last value, its smallest value and its
  number of resets;
- an hour without a reset is monotone: its first value is its smallest, so it added `last - previous`
  where its first value is at least the previous hour's last, and `last` where the counter restarted
  between the two hours (a restarted counter counts from zero);
- only the hours with a reset inside are read sample by sample (one instant range query per such hour,
  for every series at once: restarts come in deploys, so such hours are few).

Every pair of consecutive samples is thus counted once, exactly, whatever the sample interval. Cost:
three points per series and hour (2,232 per series for a month) plus the raw samples of the hours with
a restart. The value before the period is the series' last sample in the hour before it; a series
with none (born in the period, or unseen for that hour) counts from zero.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from otel_tokens.prometheus_api import Prometheus

HOUR = 3600
# Hours per query_range request (Prometheus answers at most 11,000 points per series): a day, so one
# request loads a day of raw samples, not the whole period's (memory), and four run at once.
MAX_STEPS = 24
_STATS = ("last", "min", "resets")
SeriesKey = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Chunk:
    start: float  # exclusive
    end: float  # inclusive, as a range selector ending at `end` reads (end - range, end]


def chunks(start: float, end: float, cuts: Sequence[float] = ()) -> list[Chunk]:
    """(start, end] cut at every clock hour inside it and at each of `cuts` (local midnights off whole hours)."""
    out, edge, extra = [], start, sorted(c for c in cuts if start < c < end)
    while edge < end:
        nxt = min(end, (math.floor(edge / HOUR) + 1) * HOUR, *(c for c in extra if c > edge))
        out.append(Chunk(edge, nxt))
        edge = nxt
    return out


def _key(metric: dict[str, str]) -> SeriesKey:
    return tuple(sorted((k, v) for k, v in metric.items() if k != "__name__"))


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _stats_query(selector: str, seconds: float) -> str:
    window = _duration(seconds)
    return " or ".join(f'label_replace({fn}({selector}[{window}]), "__stat", "{stat}", "", "")'
                       for fn, stat in (("last_over_time", "last"), ("min_over_time", "min"),
                                        ("resets", "resets")))


Stats = dict[SeriesKey, dict[float, dict[str, float]]]  # series -> chunk end -> stat -> value


def _collect(stats: Stats, metric: dict[str, str], points: list[tuple[float, float]]) -> None:
    """One result series' points into `stats` (the series key is built once, not once per point)."""
    metric = dict(metric)
    stat = metric.pop("__stat", "")
    if stat in _STATS:
        by_end = stats[_key(metric)]
        for t, value in points:
            entry = by_end.get(t)
            if entry is None:
                entry = by_end[t] = {}
            entry[stat] = value


def _hour_stats(prom: Prometheus, selector: str, ends: list[float]) -> Stats:
    """Stats for chunks of exactly one hour, by query_range, at most MAX_STEPS steps per request."""
    stats: Stats = defaultdict(dict)
    pieces = [ends[i:i + MAX_STEPS] for i in range(0, len(ends), MAX_STEPS)]

    def run(piece: list[float]) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        return prom.range(_stats_query(selector, HOUR), piece[0], piece[-1], HOUR)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for result in pool.map(run, pieces):
            for metric, values in result:
                _collect(stats, metric, values)
    return stats


def _edge_stats(prom: Prometheus, selector: str, chunk: Chunk, stats: Stats) -> None:
    for metric, value in prom.instant(_stats_query(selector, chunk.end - chunk.start), chunk.end):
        _collect(stats, metric, [(chunk.end, value)])


def growth(prom: Prometheus, selector: str, start: float, end: float,
           cuts: Sequence[float] = ()) -> dict[SeriesKey, dict[float, float]]:
    """What each series of `selector` grew by in (start, end], per chunk (keyed by the chunk's start):
    exact, resets included. `cuts`: more chunk edges (a partial hour is one instant query more)."""
    parts = chunks(start, end, cuts)
    if not parts:
        return {}
    whole = [c for c in parts if c.end - c.start == HOUR]
    stats = _hour_stats(prom, selector, [c.end for c in whole]) if whole else defaultdict(dict)
    for c in parts:
        if c.end - c.start != HOUR:
            _edge_stats(prom, selector, c, stats)
    baseline = {_key(m): v for m, v in prom.instant(f"last_over_time({selector}[{_duration(HOUR)}])", start)}

    # the hours with a reset inside, read sample by sample
    reset_ends = sorted({t for by_end in stats.values() for t, s in by_end.items() if s.get("resets", 0) > 0})
    ending = {c.end: c for c in parts}
    raw: dict[float, dict[SeriesKey, list[float]]] = {}
    for t in reset_ends:
        c = ending[t]
        raw[t] = {_key(m): [v for _, v in values]
                  for m, values in prom.samples(f"{selector}[{_duration(c.end - c.start)}]", t)}

    out: dict[SeriesKey, dict[float, float]] = {}
    for key, by_end in stats.items():
        previous = baseline.get(key)
        added: dict[float, float] = {}
        for c in parts:
            s = by_end.get(c.end)
            if not s or "last" not in s:
                continue
            if s.get("resets", 0) > 0:
                amount, _ = _walk(raw[c.end].get(key, []), previous)
                previous = s["last"]
            else:
                first = s.get("min", s["last"])
                amount = s["last"] - previous if previous is not None and first >= previous else s["last"]
                previous = s["last"]
            if amount:
                added[c.start] = amount
        if added:
            out[key] = added
    return out


def _walk(values: list[float], previous: float | None) -> tuple[float, float | None]:
    """Growth over consecutive samples: a drop is a restart, whose new value counts from zero."""
    total = 0.0
    for v in values:
        total += v - previous if previous is not None and v >= previous else v
        previous = v
    return total, previous


def days(added: dict[float, float], day_of: Callable[[float], float]) -> Iterator[tuple[float, float]]:
    """Chunk growth summed by day (`day_of`: the start of a chunk's day; chunks never straddle a midnight: they
    are cut at every hour and at the period's local midnights)."""
    by_day: dict[float, float] = defaultdict(float)
    for t, v in added.items():
        by_day[day_of(t)] += v
    yield from sorted(by_day.items())
