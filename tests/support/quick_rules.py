"""The rendered quota rules, with the departments' and the apps' hourly groups evaluated every few seconds for
tests that start a rule engine and read what those groups write (the month to date, the previous month)."""

from __future__ import annotations

import yaml

from otel_tokens.ops.rollups import HOUR_ROLLUP_INTERVAL

HOURLY_GROUP = "llm_quota_department_rollups"
HOURLY_GROUPS = (HOURLY_GROUP, "llm_quota_app_rollups")


def quick_hourly_group(rendered: str, interval: str = "15s") -> str:
    """The rule file with the hourly group every `interval` instead of HOUR_ROLLUP_INTERVAL: its first
    evaluation after a start then comes within seconds, not up to 4 minutes later. Its values are the same
    at any interval (an hour's bucket is the last of the equal samples written in the 15 minutes after the
    hour; the month sums are read from those); the shipped interval is checked in tests/unit/test_quota_rules.py
    and by promtool, which evaluates every group at its test's interval anyway. Unchanged without that group."""
    data = yaml.safe_load(rendered)
    for group in data["groups"]:  # none where the quotas set no department or app limit
        if group["name"] in HOURLY_GROUPS:
            assert group["interval"] == HOUR_ROLLUP_INTERVAL, group["interval"]
            group["interval"] = interval
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
