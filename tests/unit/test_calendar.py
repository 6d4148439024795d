"""The organization's calendar from tzdata: window starts at local midnight, DST days of 23 and 25 hours,
half- and quarter-hour zones, and the UTC-offset table the rules are rendered from."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest

from otel_tokens.quota import calendar as cal

SHANGHAI, NEW_YORK = "Asia/Shanghai", "America/New_York"


def at(zone: str, *fields: int) -> int:
    return int(datetime(*fields, tzinfo=cal.load_zone(zone)).timestamp())


def test_a_shanghai_day_begins_at_local_midnight_not_utc():
    five_past = at(SHANGHAI, 2026, 12, 7, 0, 5)
    assert cal.window_start("day", five_past, SHANGHAI) == at(SHANGHAI, 2026, 12, 7)
    assert cal.window_start("day", five_past, SHANGHAI) == datetime(2026, 12, 6, 16, tzinfo=timezone.utc).timestamp()
    assert cal.window_start("day", five_past, "UTC") == at("UTC", 2026, 12, 6)
    assert cal.window_end("day", five_past, SHANGHAI) == at(SHANGHAI, 2026, 12, 8)


def test_week_month_and_year_begin_on_monday_the_first_and_january():
    t = at(SHANGHAI, 2027, 1, 1, 0, 30)  # a Friday
    assert cal.window_start("week", t, SHANGHAI) == at(SHANGHAI, 2026, 12, 28)  # ISO: Monday
    assert cal.window_start("month", t, SHANGHAI) == at(SHANGHAI, 2027, 1, 1)
    assert cal.window_start("year", t, SHANGHAI) == at(SHANGHAI, 2027, 1, 1)
    just_before = at(SHANGHAI, 2026, 12, 31, 23, 59)
    assert cal.window_start("year", just_before, SHANGHAI) == at(SHANGHAI, 2026, 1, 1)
    assert cal.window_end("year", just_before, SHANGHAI) == at(SHANGHAI, 2027, 1, 1)
    assert cal.window_end("month", at(SHANGHAI, 2028, 2, 10), SHANGHAI) == at(SHANGHAI, 2028, 3, 1)


@pytest.mark.parametrize(("day", "hours"), [((2026, 3, 8), 23), ((2026, 11, 1), 25), ((2026, 7, 1), 24)])
def test_new_york_days_around_dst_last_23_and_25_hours(day, hours):
    noon = at(NEW_YORK, *day, 12)
    start, end = cal.window_start("day", noon, NEW_YORK), cal.window_end("day", noon, NEW_YORK)
    assert (end - start) == hours * 3600 and start == at(NEW_YORK, *day)


def test_the_offset_table_agrees_with_tzdata_everywhere_in_its_range():
    rng = random.Random(7)
    for zone in (NEW_YORK, SHANGHAI, "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe", "Europe/London"):
        table = cal.offset_table(zone, 1_500_000_000, 1_900_000_000)
        for t in [rng.randrange(table.start, table.end) for _ in range(300)] + [c for c, _ in table.changes]:
            expected = datetime.fromtimestamp(t, timezone.utc).astimezone(cal.load_zone(zone)).utcoffset()
            assert table.at(t) == expected.total_seconds(), (zone, t)
            assert table.at(t - 1) == datetime.fromtimestamp(t - 1, timezone.utc).astimezone(
                cal.load_zone(zone)).utcoffset().total_seconds()


def test_the_promql_offset_is_a_step_function_with_one_term_per_change():
    table = cal.offset_table(NEW_YORK, at(NEW_YORK, 2026, 1, 1), at(NEW_YORK, 2027, 1, 1))
    assert table.initial == -18000 and [o for _, o in table.changes] == [-14400, -18000]
    expr = table.promql("time()")
    assert expr == (f"-18000 + 3600 * (time() >= bool {table.changes[0][0]})"
                    f" - 3600 * (time() >= bool {table.changes[1][0]})")
    assert cal.offset_table(SHANGHAI, 1_700_000_000, 1_900_000_000).promql("time()") == "28800"


def test_buckets_must_divide_every_offset_of_the_zone():
    kolkata = cal.offset_table("Asia/Kolkata", 1_700_000_000, 1_800_000_000)
    assert cal.bucket_divides(kolkata, 3600) == [19800] and cal.bucket_divides(kolkata, 1800) == []
    kathmandu = cal.offset_table("Asia/Kathmandu", 1_700_000_000, 1_800_000_000)
    assert cal.bucket_divides(kathmandu, 1800) == [20700] and cal.bucket_divides(kathmandu, 300) == []


def test_python_calendar_ids_match_the_promql_definitions():
    monday = at("UTC", 1970, 1, 5)
    assert cal.python_calendar_id("day", monday, "UTC") == 4
    assert cal.python_calendar_id("week", monday, "UTC") == 1
    assert cal.python_calendar_id("week", monday - 1, "UTC") == 0
    assert cal.python_calendar_id("month", at(SHANGHAI, 2027, 1, 1), SHANGHAI) == 202701
    assert cal.python_calendar_id("month", at(SHANGHAI, 2027, 1, 1) - 1, SHANGHAI) == 202612
    assert cal.calendar_id("week", "time() + 28800") == "floor((floor(vector(time() + 28800) / 86400) + 3) / 7)"


@pytest.mark.parametrize(("name", "hint"), [("asia/shanghai", "Asia/Shanghai"), ("Shanghai", "Asia/Shanghai"),
                                            ("Mars/Olympus", None), ("../etc/passwd", None), ("", None)])
def test_unknown_zones_are_named_with_a_near_match(name, hint):
    with pytest.raises(cal.UnknownZoneError) as caught:
        cal.load_zone(name)
    assert repr(name) in str(caught.value)
    assert (f"did you mean {hint}?" in str(caught.value)) if hint else "did you mean" not in str(caught.value)
