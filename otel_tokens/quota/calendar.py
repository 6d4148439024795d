"""The organization's calendar: where a quota window begins in its time zone, for budget mode (Redis keys
and boundaries the Lua scripts get from the client: Lua has no tzdata) and for the rule renderer (PromQL has
no time zones: the zone's UTC offset is written out as a step function of time from tzdata).

Calendar windows begin at local midnight: a `day` in America/New_York lasts 23 or 25 hours on the days
the clocks change; a `week` is ISO (Monday); `month` and `year` begin on the 1st. `24h` is rolling.
"""

from __future__ import annotations

import bisect
import difflib
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import cached_property, lru_cache
from pathlib import Path
from zoneinfo import TZPATH, ZoneInfo, ZoneInfoNotFoundError, available_timezones

ROLLING = "24h"
DAY, WEEK, MONTH, YEAR = "day", "week", "month", "year"
CALENDAR_WINDOWS = (DAY, WEEK, MONTH, YEAR)
WINDOWS = (ROLLING, *CALENDAR_WINDOWS)
# Budget mode only (the rules' alerts lag by more than a minute): a sliding minute of tokens and requests, and
# the calls in flight at once. Checked first: the cheapest refusal, and the one that protects the GPU.
MINUTE, CONCURRENT = "minute", "concurrent"
RATE_WINDOWS = (MINUTE, CONCURRENT)
ALL_WINDOWS = (*RATE_WINDOWS, *WINDOWS)
_DAY_SECONDS = 86400
HOUR_SECONDS = 3600  # the rules' calendar buckets where the zone's offsets are whole hours (calendar_bucket)
_SCAN = 6 * 3600  # offsets are looked for every 6 h, then the change is found to the second


class UnknownZoneError(ValueError):
    pass


@lru_cache(maxsize=64)
def load_zone(name: str) -> ZoneInfo:
    """The IANA zone; UnknownZoneError says what was wrong (a typo is the usual cause, so a near match is named)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*", name):
        raise UnknownZoneError(f"is not an IANA time zone name like Asia/Shanghai or UTC: {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        zones = sorted(available_timezones())
        near = [z for z in zones if z.lower() == name.lower() or z.endswith("/" + name)] or difflib.get_close_matches(
            name, zones, n=1, cutoff=0.85)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise UnknownZoneError(f"is not an IANA time zone known to this machine's tzdata{hint}: {name!r}") from None


def tzdata_version() -> str:
    """The tzdata release the offsets come from: zoneinfo reads the system's files first (TZPATH), then the
    `tzdata` package; `unknown` when neither says."""
    for base in TZPATH:
        path = Path(base) / "tzdata.zi"
        if path.is_file():
            with path.open(encoding="utf-8", errors="replace") as file:
                first = file.readline()
            if first.startswith("# version "):
                return first.split()[-1]
    try:
        import tzdata  # type: ignore[import-not-found]

        return str(tzdata.IANA_VERSION)
    except ImportError:
        return "unknown"


def _offset(zone: ZoneInfo, at: int) -> int:
    delta = datetime.fromtimestamp(at, timezone.utc).astimezone(zone).utcoffset()
    return int(delta.total_seconds()) if delta is not None else 0


@dataclass(frozen=True)
class OffsetTable:
    """The zone's UTC offset over [start, end): `initial` before the first change, then each
    (UTC second, new offset) in time order. Outside that range the rules are not exact."""

    zone: str
    start: int
    end: int
    initial: int
    changes: tuple[tuple[int, int], ...]

    def offsets(self) -> list[int]:
        return [self.initial, *(o for _, o in self.changes)]

    @cached_property
    def _times(self) -> list[int]:
        return [c for c, _ in self.changes]

    def at(self, t: float) -> int:
        i = bisect.bisect_right(self._times, t)
        return self.changes[i - 1][1] if i else self.initial

    def promql(self, x: str) -> str:
        """The offset at time `x` (a scalar expression, e.g. `time()`, evaluated at each step inside a
        subquery): the initial offset plus each later change as a step, `(x >= bool T)`. Never the offset
        at evaluation time applied to another time (wrong by an hour across a DST change)."""
        terms = [str(self.initial)]
        previous = self.initial
        for at, offset in self.changes:
            step = offset - previous
            terms.append(f"{'+' if step > 0 else '-'} {abs(step)} * ({x} >= bool {at})")
            previous = offset
        return " ".join(terms) if len(terms) > 1 else terms[0]


def offset_table(name: str, start: int, end: int) -> OffsetTable:
    """The offsets of zone `name` from tzdata over [start, end) (UTC seconds)."""
    zone = load_zone(name)
    initial = _offset(zone, start)
    changes = []
    previous, t = initial, start
    while t < end:
        nxt = min(t + _SCAN, end)
        offset = _offset(zone, nxt)
        if offset != previous:
            low, high = t, nxt  # offset(low) == previous, offset(high) != previous
            while high - low > 1:
                mid = (low + high) // 2
                if _offset(zone, mid) == previous:
                    low = mid
                else:
                    high = mid
            previous = _offset(zone, high)
            changes.append((high, previous))
        t = nxt
    return OffsetTable(name, start, end, initial, tuple(changes))


TABLE_YEARS_BACK, TABLE_YEARS_AHEAD = 1, 3


def _new_year(year: int) -> int:
    return int(datetime(year, 1, 1, tzinfo=timezone.utc).timestamp())


def rules_table(name: str, today: date | None = None) -> OffsetTable:
    """The offsets the rules are rendered with: from January 1 of last year (the previous month's 62-day
    look-back, a year of backfill) to January 1 three years ahead, the rule file's valid-until (tzdata
    changes: re-render before then; the rules alert a month ahead). Whole years, so re-rendering the same
    file in the same year gives the same rules."""
    year = (today or datetime.now(timezone.utc).date()).year
    return offset_table(name, _new_year(year - TABLE_YEARS_BACK), _new_year(year + TABLE_YEARS_AHEAD))


def offset_text(seconds: int) -> str:
    """+08:00, -05:00, +05:45."""
    sign = "-" if seconds < 0 else "+"
    minutes = abs(seconds) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


class ZoneOffsets:
    """The zone's UTC offset at a time, for budget mode's month keys at every call: a table of the years
    around now, read by bisection (tzdata itself only outside it)."""

    def __init__(self, name: str, now: float | None = None) -> None:
        self.name, self._zone = name, load_zone(name)
        today = datetime.fromtimestamp(now, timezone.utc).date() if now is not None else None
        self._table = rules_table(name, today)

    def at(self, t: float) -> int:
        table = self._table
        return table.at(t) if table.start <= t < table.end else _offset(self._zone, int(t))


def bucket_divides(table: OffsetTable, bucket_seconds: int) -> list[int]:
    """The zone's offsets that a bucket of this size does not divide (a bucket would straddle local
    midnight): Asia/Kolkata's +5:30 for hourly buckets, Asia/Kathmandu's +5:45 for 30-minute ones."""
    return sorted({o for o in table.offsets() if o % bucket_seconds})


BUCKET_SIZES = (3600, 1800, 900)  # the rules' calendar buckets, largest first: an hour, else a half or a quarter


def calendar_bucket(table: OffsetTable | None) -> int | None:
    """Seconds of the rules' calendar buckets in a zone: the largest of BUCKET_SIZES that divides every offset of
    its table (an hour; Asia/Kolkata's +05:30 half an hour, Asia/Kathmandu's +05:45 a quarter), so no bucket
    straddles local midnight; None when none does. UTC (no table): an hour."""
    if table is None:
        return BUCKET_SIZES[0]
    return next((size for size in BUCKET_SIZES if not bucket_divides(table, size)), None)


def window_start(window: str, at: float, zone_name: str) -> int:
    """UTC second at which the window holding `at` began: local midnight of the day, of the ISO week's
    Monday, of the 1st of the month or of January (the first instant of that local date when midnight was
    skipped by a DST change). `24h` has no fixed start: 24 h before `at`."""
    if window == ROLLING:
        return int(at) - 24 * 3600
    zone = load_zone(zone_name)
    local = datetime.fromtimestamp(at, timezone.utc).astimezone(zone)
    day = local.date()
    if window == WEEK:
        day -= timedelta(days=day.weekday())
    elif window == MONTH:
        day = day.replace(day=1)
    elif window == YEAR:
        day = day.replace(month=1, day=1)
    elif window != DAY:
        raise ValueError(f"unknown window {window!r} (one of {', '.join(WINDOWS)})")
    return _local_midnight(day.year, day.month, day.day, zone)


def window_end(window: str, at: float, zone_name: str) -> int:
    """UTC second at which the window holding `at` ends (the next one's start)."""
    if window == ROLLING:
        return int(at)
    start = window_start(window, at, zone_name)
    zone = load_zone(zone_name)
    local = datetime.fromtimestamp(start, timezone.utc).astimezone(zone).date()
    if window == DAY:
        nxt = local + timedelta(days=1)
    elif window == WEEK:
        nxt = local + timedelta(days=7)
    elif window == MONTH:
        nxt = (local.replace(day=28) + timedelta(days=4)).replace(day=1)
    else:
        nxt = local.replace(year=local.year + 1, month=1, day=1)
    return _local_midnight(nxt.year, nxt.month, nxt.day, zone)


def _local_midnight(year: int, month: int, day: int, zone: ZoneInfo) -> int:
    """The first UTC second whose local date is this date (midnight, or later where a DST change skipped it)."""
    naive = datetime(year, month, day)
    guess = int(naive.replace(tzinfo=zone).timestamp())
    # a skipped midnight (e.g. America/Santiago) maps to a time of the previous date or past the gap: find the
    # first second of the date by stepping from a safe point before it
    low = guess - 3 * 3600
    high = guess + 3 * 3600
    while high - low > 1:
        mid = (low + high) // 2
        if datetime.fromtimestamp(mid, timezone.utc).astimezone(zone).date() >= naive.date():
            high = mid
        else:
            low = mid
    return high


def calendar_id(window: str, local_seconds: str) -> str:
    """PromQL (a one-element vector) for the id of the calendar window holding the local time
    `local_seconds` (a scalar expression: UTC seconds plus the offset): days since 1970-01-01, ISO weeks
    since the Monday 1969-12-29, YYYYMM, YYYY. Equal ids mean the same window."""
    if window == DAY:
        return f"floor(vector({local_seconds}) / {_DAY_SECONDS})"
    if window == WEEK:  # 1970-01-01 was a Thursday
        return f"floor((floor(vector({local_seconds}) / {_DAY_SECONDS}) + 3) / 7)"
    if window == MONTH:
        return f"(year(vector({local_seconds})) * 100 + month(vector({local_seconds})))"
    if window == YEAR:
        return f"year(vector({local_seconds}))"
    raise ValueError(f"{window!r} is not a calendar window ({', '.join(CALENDAR_WINDOWS)})")


def python_calendar_id(window: str, at: float, zone_name: str) -> int:
    """The same ids in Python, for tests and budget mode's keys."""
    local = datetime.fromtimestamp(at, timezone.utc).astimezone(load_zone(zone_name))
    day = (local.date() - datetime(1970, 1, 1).date()).days
    return {DAY: day, WEEK: (day + 3) // 7, MONTH: local.year * 100 + local.month, YEAR: local.year}[window]

