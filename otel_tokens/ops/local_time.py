"""The organization's local time in PromQL, which has no time zones: the zone's UTC offset written out from
tzdata as a step function of the time it is applied to (`quota.calendar.OffsetTable.promql`), so a bucket
inside a subquery gets the offset of its own time, not the evaluation's (an hour off across a DST change).

UTC needs no table: its local time is the time itself, and its rule file has no valid-until.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from otel_tokens.quota.calendar import OffsetTable, calendar_bucket, rules_table, tzdata_version

EXPIRY_ALERT = "LLMQuotaRulesTimeZoneExpiring"
EXPIRY_NOTICE = 30 * 86400  # the alert fires this long before the offsets run out


@dataclass(frozen=True)
class LocalTime:
    zone: str
    table: OffsetTable | None  # None: UTC

    @classmethod
    def of(cls, zone: str, today: date | None = None) -> LocalTime:
        return cls(zone, None if zone == "UTC" else rules_table(zone, today))

    def seconds(self, utc: str) -> str:
        """Local seconds (UTC seconds plus the offset then) of the scalar expression `utc`, in parentheses
        unless it is `utc` itself."""
        if self.table is None:
            return utc
        return f"({utc} + ({self.table.promql(f'({utc})')}))"

    @property
    def bucket(self) -> int:
        """Seconds of the calendar buckets (hour_rules) in this zone: 3600, or 1800 / 900 off whole hours."""
        size = calendar_bucket(self.table)
        assert size is not None, f"{self.zone}: no bucket size divides its offsets (require_built refuses it)"
        return size

    def valid_until(self) -> str:
        assert self.table is not None
        return datetime.fromtimestamp(self.table.end, timezone.utc).date().isoformat()

    def header(self) -> str:
        """Comment lines for the rule file: where the offsets come from and until when they hold."""
        if self.table is None:
            return ""
        return (f"# Time zone {self.zone} (tzdata {tzdata_version()}): its UTC offsets are written out until "
                f"{self.valid_until()}; re-render before then (an alert fires a month ahead).\n")

    def expiry_group(self) -> list[dict[str, Any]]:
        """A group of one alert: the offsets run out within a month (tzdata may also have changed since)."""
        if self.table is None:
            return []
        alert = {
            "alert": EXPIRY_ALERT,
            "expr": f"vector(time()) > {self.table.end - EXPIRY_NOTICE}",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"The quota rules' offsets of {self.zone} end on {self.valid_until()}",
                "description": f"The quota rules were rendered with the UTC offsets of {self.zone} until "
                               f"{self.valid_until()} (tzdata {tzdata_version()}); after that the calendar "
                               "windows are not exact. Re-render them (`otel-tokens rules`) and reload the rule "
                               "engine.",
            },
        }
        return [{"name": "llm_quota_calendar", "interval": "1h", "rules": [alert]}]
