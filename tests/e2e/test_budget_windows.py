"""Budget mode's calendar windows on a real redis-server: a principal's day, ISO week, month and year in the
organization's zone (DST days, half-hour and quarter-hour zones, a skipped midnight, the year's end), several
windows at once, the keys they live in, and an app refused by the window that decides."""

from __future__ import annotations

from datetime import datetime

import pytest
import redis

from otel_tokens import QuotaExceededError
from otel_tokens.quota.budget.store import (
    DOWNGRADE,
    REFUSED,
    RESERVED,
    Charge,
    RedisBudgetStore,
    Settlement,
    principal_keys,
)
from otel_tokens.quota.calendar import load_zone, window_end, window_start
from otel_tokens.quota.vocabulary import DEPARTMENT, USER
from tests.support.budget import REJECT_ALL, budget_app, packed_windows, write_quotas
from tests.support.budget_store import Clock, local_time, use
from tests.support.redis_server import RedisServer

# (zone, window, a local time inside the window): the reference is calendar.window_start/window_end (Python's
# tzdata), not the Lua's arithmetic on the offset the client sends
CASES = [
    ("Asia/Shanghai", "day", (2026, 12, 7, 12)),  # UTC+8: the day begins at 16:00 UTC the day before
    ("America/New_York", "day", (2027, 3, 14, 12)),  # 23 hours: the clocks go forward at 02:00
    ("America/New_York", "day", (2026, 11, 1, 12)),  # 25 hours: the clocks go back
    ("Asia/Kolkata", "day", (2027, 1, 15, 12)),  # +05:30: begins at 18:30 UTC
    ("Asia/Kathmandu", "week", (2026, 12, 9, 12)),  # +05:45; the ISO week of Monday 7 December
    ("Australia/Lord_Howe", "day", (2026, 10, 4, 12)),  # a half-hour DST change (+10:30 -> +11)
    ("America/Santiago", "day", (2026, 9, 6, 12)),  # midnight skipped: the day begins at 01:00 local
    ("America/New_York", "week", (2026, 11, 4, 12)),  # a week holding the clocks going back (169 hours)
    ("Asia/Shanghai", "month", (2027, 2, 10, 12)),
    ("Asia/Shanghai", "year", (2026, 12, 31, 12)),  # the year ends at 16:00 UTC on Dec 31
    ("UTC", "week", (2027, 1, 1, 12)),  # a Friday: the week began on Monday 28 December 2026
    ("UTC", "year", (2028, 2, 29, 12)),
]


@pytest.mark.parametrize(("zone", "window", "inside"), CASES, ids=[f"{z}-{w}" for z, w, _ in CASES])
def test_a_calendar_window_holds_exactly_its_local_span(redis_url, zone, window, inside):
    clock = Clock()
    store = RedisBudgetStore(redis_url, timeout=1.0, clock=clock)
    store.set_zone(zone)
    at = local_time(zone, *inside)
    start, end = window_start(window, at, zone), window_end(window, at, zone)
    charge = Charge(USER, f"{zone}-{window}-{at}", 1, 0, window=window)
    clock.t = start - 1
    use(store, charge, 3, "before")
    assert store.read(USER, charge.principal, window)[0] == 3  # the window before
    clock.t = start
    assert store.read(USER, charge.principal, window)[0] == 0, "the window begins at local midnight"
    use(store, charge, 5, "first")
    clock.t = end - 1
    assert store.read(USER, charge.principal, window)[0] == 5, f"still {window} at {end - start - 1} s"
    clock.t = end
    assert store.read(USER, charge.principal, window)[0] == 0, "the next window"


def test_a_users_day_and_month_are_enforced_at_once_and_the_window_that_refuses_is_named(redis_url):
    """Shanghai: the day's 100 tokens come back at 00:00 local (16:00 UTC), the month's 250 do not; the rolling
    24 h (the users' own window, no limit here) still sees yesterday's usage at 00:05 local."""
    clock = Clock(local_time("Asia/Shanghai", 2026, 12, 7, 23, 0))
    store = RedisBudgetStore(redis_url, timeout=1.0, clock=clock)
    store.set_zone("Asia/Shanghai")

    def ask(tokens: int, reservation: str) -> object:
        charges = [Charge(USER, "li", tokens, 0, window="24h"), Charge(USER, "li", tokens, 0, 100, window="day"),
                   Charge(USER, "li", tokens, 0, 250, window="month")]
        verdict = store.reserve(reservation, 600, charges)
        if verdict.status == RESERVED:
            store.settle([Settlement(charges, reservation, tokens, 0)])
        return verdict

    assert ask(90, "a").status == RESERVED
    refused = ask(20, "b")
    assert refused.status == REFUSED and refused.charge.window == "day" and (refused.used, refused.limit) == (90, 100)
    clock.t = local_time("Asia/Shanghai", 2026, 12, 8, 0, 5)
    assert store.read(USER, "li", "day")[0] == 0 and store.read(USER, "li")[0] == 90  # the 24 h still sees it
    assert ask(90, "c").status == RESERVED
    clock.t = local_time("Asia/Shanghai", 2026, 12, 9, 0, 5)
    refused = ask(90, "d")  # the day has room (0 of 100), the month has 70 left
    assert refused.status == REFUSED and refused.charge.window == "month" and (refused.used, refused.limit) == (
        180, 250)
    # the 24 h begins on the 5-minute boundary at least 24 h ago: it still holds the call made at 00:05 yesterday
    assert [store.read(USER, "li", w)[0] for w in ("24h", "day", "month")] == [90, 0, 180]


def test_an_app_is_refused_by_its_users_day_or_its_departments_year_whichever_crosses_first(tmp_path, redis_url):
    quota_file = write_quotas(tmp_path / "q.yml", {"default": {"day": {"tokens": 300}, "month": {"tokens": 100000}},
                                                   "overrides": {"bob": {"day": {"tokens": 100000}}}},
                              {"default": {"month": {"tokens": 100000}, "year": {"tokens": 700}}},
                              timezone="Asia/Shanghai")
    for app in budget_app(quota_file, redis_url, REJECT_ALL):
        with pytest.raises(QuotaExceededError) as caught:
            for _ in range(50):
                app.ask("alice", department="sales")
        assert (caught.value.scope, caught.value.window, caught.value.kind) == ("user", "day", "tokens")
        budget = app.recorder.enforcement.budget
        budget.flush()
        used = app.metric_tokens("alice")
        # every window of the user and the department counted the same calls, the scopes' own ones included
        assert [budget.store.read(USER, "alice", w)[0] for w in ("24h", "day", "month")] == [used] * 3
        assert [budget.store.read(DEPARTMENT, "sales", w)[0] for w in ("month", "year")] == [used] * 2
        with pytest.raises(QuotaExceededError) as caught:
            for _ in range(50):
                app.ask("bob", department="sales")
        assert (caught.value.scope, caught.value.principal, caught.value.window) == ("department", "sales", "year")
        assert "would go over the year tokens quota" in str(caught.value)
        assert app.decisions(window=True) == {("reject", "user", "day"): 1, ("reject", "department", "year"): 1}
        state = packed_windows(redis.Redis.from_url(redis_url).hget(principal_keys(DEPARTMENT, "sales")[0], "S"))
        assert state["year."][0] == datetime.now(load_zone("Asia/Shanghai")).year  # the local year's bucket



def test_on_redis_cluster_a_departments_refusal_wins_over_the_users_downgrade_and_nothing_stays_held():
    """One script per principal there (its windows share a slot): the user's window asks for a downgrade, the
    department's year refuses; one script on one Redis answers the refusal, and so must the cluster."""
    with RedisServer(cluster=True) as server:
        store = RedisBudgetStore(server.url, timeout=1.0)
        charges = [Charge(USER, "ann", 100, 0, window="24h"),
                   Charge(USER, "ann", 100, 0, 150, refuse=None, downgrade=0.5, window="day"),
                   Charge(DEPARTMENT, "ops", 100, 0, window="month"),
                   Charge(DEPARTMENT, "ops", 100, 0, 50, window="year")]
        verdict = store.reserve("r1", 600, charges)
        assert store.cluster and verdict.status == REFUSED and (verdict.charge.scope, verdict.charge.window) == (
            DEPARTMENT, "year")
        assert [store.read(USER, "ann", w) for w in ("24h", "day")] == [(0, 0, 0)] * 2
        assert [store.read(DEPARTMENT, "ops", w) for w in ("month", "year")] == [(0, 0, 0)] * 2
        charges[3] = Charge(DEPARTMENT, "ops", 100, 0, 500, window="year")
        verdict = store.reserve("r2", 600, charges)  # now only the user's downgrade: asked, nothing held
        assert verdict.status == DOWNGRADE and verdict.charge.window == "day"
        assert store.read(DEPARTMENT, "ops", "year") == (0, 0, 0) and store.read(USER, "ann") == (0, 0, 0)


def test_a_scope_that_only_downgrades_is_asked_to_downgrade_never_refused(redis_url):
    """A scope whose guard rules only downgrade has no refusal level: crossing its downgrade level asks for the
    cheaper model (the Lua once read a missing refusal level as the downgrade level, and refused there)."""
    store = RedisBudgetStore(redis_url, timeout=1.0)
    verdict = store.reserve("r", 600, [Charge(USER, "dan", 100, 0, 150, refuse=None, downgrade=0.5)])
    assert verdict.status == DOWNGRADE and (verdict.used, verdict.amount, verdict.limit) == (0, 100, 150)
    assert store.reserve("r", 600, [Charge(USER, "dan", 100, 0, 150, refuse=None, downgrade=None)]).status == RESERVED


def test_a_downgrade_names_the_window_that_asked_for_it_and_a_downgrade_only_scope_never_refuses(tmp_path,
                                                                                                 redis_url):
    from otel_tokens.config.settings import GuardRule

    quota_file = write_quotas(tmp_path / "q.yml", {"default": {"24h": {"tokens": 10**6}, "day": {"tokens": 600}}},
                              warning_ratio=0.5, timezone="Asia/Shanghai")
    rules = (GuardRule("user", "downgrade", "warning", (("gpt-4o", "gpt-4o-mini"),)),)
    for app in budget_app(quota_file, redis_url, rules):
        for _ in range(40):  # past 100 % of the day: downgraded, never refused (no reject rule)
            app.ask("fay")
        models = [r.body["model"] for r in app.server.requests]
        assert models[0] == "gpt-4o" and models[-1] == "gpt-4o-mini" and app.metric_tokens("fay") > 600
        assert set(app.decisions(window=True)) == {("downgrade", "user", "day")}
