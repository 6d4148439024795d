"""Report periods in the organization's time zone (`--timezone`, else the quota file's, else UTC): a statement's
calendar month (`--month 2026-11`) or `--from/--to`, and the digest's window (`today`, `yesterday` or a
duration); a month and a date begin at local midnight (`calendar`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from otel_tokens.ops.report.model import USAGE_ERROR, ReportError, parse_window
from otel_tokens.quota.calendar import DAY, MONTH, UnknownZoneError, load_zone, window_end, window_start

_MONTH = re.compile(r"(\d{4})-(\d{2})")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Period:
    start: float  # inclusive, unix seconds
    end: float  # exclusive
    label: str  # 2026-11, or 2026-11-03T00:00:00Z/2026-11-10T00:00:00Z
    zone: str = "UTC"  # the days and the month are this zone's

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def day(self, t: float) -> tuple[float, float]:
        """The local day holding t, clipped to the period: (start, end) in UTC seconds."""
        return max(self.start, window_start(DAY, t, self.zone)), min(self.end, window_end(DAY, t, self.zone))

    def midnights(self, end: float) -> list[float]:
        """The local midnights inside (start, end): where a statement's days are cut (off whole hours they fall
        inside clock hours: Asia/Kolkata's at :30)."""
        out, t = [], float(window_end(DAY, self.start, self.zone))
        while t < end:
            out.append(t)
            t = float(window_end(DAY, t, self.zone))
        return out


def zone_of(name: str) -> str:
    """The zone name, or a usage error naming it (a near match suggested)."""
    try:
        load_zone(name)
    except UnknownZoneError as error:
        raise ReportError(f"bad --timezone: {error}", USAGE_ERROR) from None
    return name


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def month(text: str, zone: str = "UTC") -> Period:
    match = _MONTH.fullmatch(text.strip())
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
        raise ReportError(f"bad --month {text!r}: use YYYY-MM, e.g. 2026-11", USAGE_ERROR)
    year, number = int(match.group(1)), int(match.group(2))
    inside = datetime(year, number, 15, 12, tzinfo=load_zone(zone)).timestamp()
    return Period(window_start(MONTH, inside, zone), window_end(MONTH, inside, zone), f"{year:04d}-{number:02d}", zone)


def moment(text: str, option: str, end_of_day: bool = False, zone: str = "UTC") -> float:
    """A date (YYYY-MM-DD: local midnight in `zone`; with end_of_day the next one, so --to is inclusive), an ISO
    timestamp (without an offset: local time in `zone`) or unix seconds."""
    value = text.strip()
    try:
        if re.fullmatch(r"\d+(\.\d+)?", value):
            seconds = float(value)
        elif _DATE.fullmatch(value):
            noon = datetime.strptime(value, "%Y-%m-%d").replace(hour=12, tzinfo=load_zone(zone)).timestamp()
            seconds = float((window_end if end_of_day else window_start)(DAY, noon, zone))
        else:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=load_zone(zone))
            seconds = parsed.timestamp()
    except (ValueError, OverflowError):
        seconds = -1.0
    if not seconds > 0:
        raise ReportError(f"bad {option} {text!r}: use a date (2026-11-01: local midnight in {zone}), an ISO "
                          "timestamp (2026-11-01T12:00:00Z) or unix seconds", USAGE_ERROR)
    return seconds


def between(start_text: str, end_text: str | None, now: float, zone: str = "UTC") -> Period:
    start = moment(start_text, "--from", zone=zone)
    end = now if end_text is None else moment(end_text, "--to", end_of_day=True, zone=zone)
    if not start < end:
        raise ReportError(f"empty period: --from {start_text} is not before --to "
                          f"{end_text if end_text is not None else 'now'} ({_iso(start)} >= {_iso(end)})", USAGE_ERROR)
    return Period(start, end, f"{_iso(start)}/{_iso(end)}", zone)


def digest_window(text: str, at: float, zone: str) -> tuple[float, float, float, float]:
    """The digest's window (end, seconds) and the one it is compared with (end, seconds). `yesterday`: the local
    day before the one holding `at`, against the day before it (each as long as it was: 23 or 25 h on a DST
    day); `today`: from local midnight to `at`, against the same time since yesterday's midnight; a duration:
    that long up to `at`, against the same length before."""
    if text == "yesterday":
        end = float(window_start(DAY, at, zone))
        start = float(window_start(DAY, end - 1, zone))
        before = float(window_start(DAY, start - 1, zone))
        return end, end - start, start, start - before
    if text == "today":
        start = float(window_start(DAY, at, zone))
        if at <= start:
            raise ReportError(f"--window today: the day has just begun at {_iso(at)} ({zone}); use yesterday",
                              USAGE_ERROR)
        yesterday = float(window_start(DAY, start - 1, zone))
        return at, at - start, yesterday + (at - start), at - start
    seconds = parse_window(text)
    return at, seconds, at - seconds, seconds
