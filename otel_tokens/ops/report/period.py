"""Statement periods: a calendar month (`--month 2026-11`) or `--from/--to`, in UTC."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from otel_tokens.ops.report.model import USAGE_ERROR, ReportError

_MONTH = re.compile(r"(\d{4})-(\d{2})")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Period:
    start: float  # inclusive, unix seconds
    end: float  # exclusive
    label: str  # 2026-11, or 2026-11-03T00:00:00Z/2026-11-10T00:00:00Z

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def month(text: str) -> Period:
    match = _MONTH.fullmatch(text.strip())
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
        raise ReportError(f"bad --month {text!r}: use YYYY-MM, e.g. 2026-11", USAGE_ERROR)
    year, number = int(match.group(1)), int(match.group(2))
    start = datetime(year, number, 1, tzinfo=timezone.utc)
    end = datetime(year + (number == 12), number % 12 + 1, 1, tzinfo=timezone.utc)
    return Period(start.timestamp(), end.timestamp(), f"{year:04d}-{number:02d}")


def moment(text: str, option: str, end_of_day: bool = False) -> float:
    """A UTC date (YYYY-MM-DD: midnight; with end_of_day the next midnight, so --to is inclusive), an ISO
    timestamp (no zone means UTC) or unix seconds."""
    value = text.strip()
    try:
        if re.fullmatch(r"\d+(\.\d+)?", value):
            seconds = float(value)
        elif _DATE.fullmatch(value):
            day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
            seconds = (day + timedelta(days=1 if end_of_day else 0)).timestamp()
        else:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            seconds = parsed.timestamp()
    except (ValueError, OverflowError):
        seconds = -1.0
    if not seconds > 0:
        raise ReportError(f"bad {option} {text!r}: use a UTC date (2026-11-01), an ISO timestamp "
                          "(2026-11-01T12:00:00Z) or unix seconds", USAGE_ERROR)
    return seconds


def between(start_text: str, end_text: str | None, now: float) -> Period:
    start = moment(start_text, "--from")
    end = now if end_text is None else moment(end_text, "--to", end_of_day=True)
    if not start < end:
        raise ReportError(f"empty period: --from {start_text} is not before --to "
                          f"{end_text if end_text is not None else 'now'} ({_iso(start)} >= {_iso(end)})", USAGE_ERROR)
    return Period(start, end, f"{_iso(start)}/{_iso(end)}")
