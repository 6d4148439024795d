"""Budget mode's store on a real redis-server: the Lua scripts' reservations, settlements, expiry,
windows (rolling 24 h in 5-minute buckets, calendar month in the organization's zone), hostile ids, Redis
Cluster."""

from __future__ import annotations

import calendar
import threading
from datetime import datetime, timezone

import pytest

from otel_tokens.quota.budget.store import NANO, REFUSED, RESERVED, Charge, RedisBudgetStore, Settlement, principal_keys
from otel_tokens.quota.vocabulary import DEPARTMENT, USER
from tests.support.budget_store import Clock, local_time
from tests.support.redis_server import RedisServer

B0 = calendar.timegm((2026, 11, 20, 12, 0, 0))  # a 5-minute boundary



@pytest.fixture
def clock() -> Clock:
    return Clock(B0 + 10)


@pytest.fixture
def store(redis_url: str, clock: Clock) -> RedisBudgetStore:
    return RedisBudgetStore(redis_url, timeout=1.0, clock=clock)


def charges(tokens: int, user_limit: int | None = 1000, dept_limit: int | None = None, cost: int = 0,
            user: str = "alice", department: str = "sales") -> list[Charge]:
    return [Charge(USER, user, tokens, cost, user_limit), Charge(DEPARTMENT, department, tokens, cost, dept_limit)]


def reserved(store: RedisBudgetStore, reservation: str, ttl: float, chs: list[Charge]) -> str:
    assert store.reserve(reservation, ttl, chs).status == RESERVED
    return reservation


def settle(store: RedisBudgetStore, reservation: str, chs: list[Charge], tokens: int, cost: int = 0) -> None:
    store.settle([Settlement(chs, reservation, tokens, cost)])


def test_reserve_holds_the_worst_case_and_settle_replaces_it_with_the_truth(store):
    chs = charges(300, cost=2 * NANO)
    first = reserved(store, "r1", 600, chs)
    assert store.read(USER, "alice") == (300, 2 * NANO, 1)
    assert store.read(DEPARTMENT, "sales") == (300, 2 * NANO, 1)
    settle(store, first, chs, 120, NANO // 2)
    assert store.read(USER, "alice") == (120, NANO // 2, 0)
    assert store.read(DEPARTMENT, "sales") == (120, NANO // 2, 0)
    settle(store, first, chs, 120, NANO // 2)  # sent again (its reply was lost): counts once
    assert store.read(USER, "alice") == (120, NANO // 2, 0)


def test_refused_at_the_call_that_would_cross_and_exactly_the_limit_is_allowed(store):
    for i in range(3):
        assert store.reserve(f"r{i}", 600, charges(300)).status == RESERVED
    refused = store.reserve("r3", 600, charges(101))
    assert refused.status == REFUSED and refused.charge.principal == "alice" and refused.quota == "tokens"
    assert (refused.used, refused.amount, refused.limit) == (900, 101, 1000)
    assert store.read(USER, "alice") == (900, 0, 3)  # a refusal reserves nothing, for no principal
    assert store.read(DEPARTMENT, "sales") == (900, 0, 3)
    assert store.reserve("r4", 600, charges(100)).status == RESERVED  # 1000 of 1000


def test_a_department_refusal_holds_nothing_for_the_user(store):
    refused = store.reserve("r1", 600, charges(300, user_limit=None, dept_limit=200))
    assert refused.status == REFUSED and refused.charge.scope is DEPARTMENT
    assert store.read(USER, "alice") == (0, 0, 0)


def test_cost_limits_count_in_nano_units(store):
    chs = [Charge(USER, "alice", 10, 3 * NANO // 10, None, NANO)]  # 0.3 of a limit of 1
    assert [store.reserve(f"r{i}", 600, chs).status for i in range(4)] == [RESERVED] * 3 + [REFUSED]


def test_threads_racing_for_the_last_tokens_never_take_more_than_the_limit(store):
    outcomes: list[int] = []

    def worker(n: int) -> None:
        while True:
            status = store.reserve(f"w{n}-{len(outcomes)}-{threading.get_ident()}", 600, charges(7)).status
            outcomes.append(status)
            if status == REFUSED:
                return

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(RESERVED) == 1000 // 7
    assert store.read(USER, "alice")[0] == 7 * (1000 // 7)


def test_an_abandoned_reservation_is_reclaimed_after_its_ttl(store, clock):
    chs = charges(400)
    held = reserved(store, "dead", 30, chs)  # its process is killed: never settled
    clock.t += 29
    assert store.read(USER, "alice") == (400, 0, 1)
    clock.t += 2
    assert store.read(USER, "alice") == (0, 0, 0)
    assert store.reserve("next", 30, charges(1000)).status == RESERVED  # the whole limit is free again
    settle(store, held, chs, 50)  # a late settlement counts the truth, takes nothing back twice
    assert store.read(USER, "alice") == (1050, 0, 1)


def test_the_rolling_window_drops_a_bucket_exactly_when_the_rules_do(store, clock):
    """Window: from the latest 5-minute boundary at least 24 h ago up to now (as the Prometheus rules)."""
    chs = charges(100)
    settle(store, reserved(store, "a", 600, chs), chs, 100)  # in bucket [B0, B0+300)
    clock.t = B0 + 150
    settle(store, reserved(store, "b", 600, chs), chs, 10)
    clock.t = B0 + 300 + 5  # the next bucket
    settle(store, reserved(store, "c", 600, chs), chs, 1)
    clock.t = B0 + 86400 + 299
    assert store.read(USER, "alice")[0] == 111
    clock.t = B0 + 86400 + 300
    assert store.read(USER, "alice")[0] == 1
    clock.t = B0 + 86400 + 600
    assert store.read(USER, "alice")[0] == 0
    clock.t = B0 + 5 * 86400  # days idle: everything gone, and counting starts again
    settle(store, reserved(store, "d", 600, chs), chs, 7)
    assert store.read(USER, "alice")[0] == 7


def test_department_budgets_restart_at_each_calendar_month_utc(store, clock):
    months = [(y, m) for y in (2027, 2028) for m in range(1, 13)] + [(2100, 3), (2000, 3)]
    for i, (year, month) in enumerate(months):  # leap years, century rules, December to January
        start = calendar.timegm((year, month, 1, 0, 0, 0))
        department = f"dept-{i}"
        chs = charges(5, user_limit=None, department=department)
        clock.t = start - 1
        settle(store, reserved(store, f"r{i}", 600, chs), chs, 5)
        assert store.read(DEPARTMENT, department)[0] == 5, datetime.fromtimestamp(start - 1, timezone.utc)
        clock.t = start
        assert store.read(DEPARTMENT, department)[0] == 0, (year, month)


@pytest.mark.parametrize(("zone", "month"), [
    ("Asia/Shanghai", (2026, 12, 1)),  # UTC+8: December begins on Nov 30 at 16:00 UTC
    ("America/New_York", (2026, 12, 1)),  # EST, a month after the clocks went back (the offset now is -5 h)
    ("America/New_York", (2027, 4, 1)),  # EDT: -4 h
    ("Asia/Kolkata", (2027, 1, 1)),  # +05:30 (refused by the rules' hourly buckets; the store itself is exact)
])
def test_department_months_begin_at_local_midnight_in_the_organizations_zone(store, clock, zone, month):
    store.set_zone(zone)
    start = local_time(zone, *month)
    chs = charges(5, user_limit=None, department="sales")
    clock.t = start - 1
    settle(store, reserved(store, "late", 600, chs), chs, 5)
    assert store.read(DEPARTMENT, "sales")[0] == 5
    clock.t = start
    assert store.read(DEPARTMENT, "sales")[0] == 0  # local midnight on the 1st, not UTC's
    settle(store, reserved(store, "early", 600, chs), chs, 7)
    clock.t = start + 20 * 86400
    assert store.read(DEPARTMENT, "sales")[0] == 7


def test_a_process_without_a_zone_shares_the_months_keys_and_a_zone_change_applies_from_its_next_month(
        redis_url, clock):
    """Processes of a version before zones (window kind `m`, UTC) and of this one with the file's zone UTC write
    the same keys; switching to Asia/Shanghai mid-month goes on counting the same month until the local one ends."""
    utc, shanghai = (RedisBudgetStore(redis_url, timeout=1.0, clock=clock) for _ in range(2))
    chs = charges(10, user_limit=None, department="ops")
    clock.t = calendar.timegm((2026, 12, 10, 0, 0, 0))
    settle(utc, reserved(utc, "a", 600, chs), chs, 10)
    shanghai.set_zone("UTC")
    settle(shanghai, reserved(shanghai, "b", 600, chs), chs, 10)
    assert utc.read(DEPARTMENT, "ops")[0] == 20
    shanghai.set_zone("Asia/Shanghai")
    assert shanghai.read(DEPARTMENT, "ops")[0] == 20  # the same month, read in the new zone
    clock.t = local_time("Asia/Shanghai", 2027, 1, 1)  # Dec 31 16:00 UTC: still December for the UTC process
    assert shanghai.read(DEPARTMENT, "ops")[0] == 0 and utc.read(DEPARTMENT, "ops")[0] == 0  # a key's month only
    # goes forward: once a process of the zone has opened January, a UTC process counts in January too


@pytest.mark.parametrize("hostile", ["{alice}", "alice}", "{", "a:usage", "alice\x00", "ali{ce}:held", "", "x" * 10_000,
                                     "用户", "\udcff"])
def test_hostile_ids_reach_only_their_own_keys(store, hostile):
    """A `{` moves a Redis hash tag: ids are hashed inside a tag of ours, never pasted into a key."""
    assert store.reserve("victim", 600, charges(900)).status == RESERVED  # alice, sales
    chs = charges(50, user=hostile, department=hostile)
    assert store.reserve("h", 600, chs).status == RESERVED
    assert store.read(USER, "alice")[0] == 900 and store.read(USER, hostile)[0] == 50
    assert store.read(DEPARTMENT, hostile)[0] == 50 and store.read(DEPARTMENT, "sales")[0] == 900
    for key in principal_keys(USER, hostile) + principal_keys(DEPARTMENT, hostile):
        tag = key[key.index("{") + 1:key.index("}")]
        assert len(tag) == 34 and tag[0] in "ud" and all(c in "0123456789abcdef" for c in tag[2:])
        assert key in (f"otel-tokens:{{{tag}}}", f"otel-tokens:{{{tag}}}:marks")


def test_on_redis_cluster_the_user_is_released_when_the_department_refuses():
    """Two principals live in two slots: reserved one after the other, the first given back on a refusal."""
    with RedisServer(cluster=True) as server:
        store = RedisBudgetStore(server.url, timeout=1.0)
        client = server.client()
        user_key, dept_key = principal_keys(USER, "alice")[0], principal_keys(DEPARTMENT, "sales")[0]
        assert client.cluster("keyslot", user_key) != client.cluster("keyslot", dept_key)
        chs = charges(100, dept_limit=150)
        first = reserved(store, "r1", 600, chs)
        assert store.cluster
        refused = store.reserve("r2", 600, chs)
        assert refused.status == REFUSED and refused.charge.scope is DEPARTMENT
        assert store.read(USER, "alice") == (100, 0, 1)  # r2's user part was given back
        settle(store, first, chs, 30)
        assert store.read(USER, "alice") == (30, 0, 0) and store.read(DEPARTMENT, "sales") == (30, 0, 0)


def test_reservations_in_flight_at_the_month_boundary_move_into_the_new_month(store, clock):
    """A call reserved at 23:59:59 on the last day is still in flight at midnight: the new month
    holds its worst case, so nobody takes that room, and it settles there (where the metrics count it)."""
    clock.t = calendar.timegm((2027, 1, 31, 23, 59, 59))
    chs = charges(600, user_limit=None, dept_limit=1000)
    late = store.reserve("late", 600, chs)
    assert late.status == RESERVED
    clock.t += 2  # February
    refused = store.reserve("early", 600, charges(1000, user_limit=None, dept_limit=1000))
    assert refused.status == REFUSED and refused.used == 600
    settle(store, "late", chs, 500)  # found by its id in February's bucket
    assert store.read(DEPARTMENT, "sales") == (500, 0, 0)
    assert store.reserve("fits", 600, charges(500, user_limit=None, dept_limit=1000)).status == RESERVED


def test_a_settlement_counts_once_however_often_it_is_sent(store, clock):
    chs = charges(300)
    held = reserved(store, "r1", 30, chs)
    clock.t += 31
    assert store.read(USER, "alice") == (0, 0, 0)  # reclaimed: its process looked dead
    for _ in range(3):  # then its settlement arrives, and again (a reply lost, a pipeline re-sent)
        settle(store, held, chs, 120)
    assert store.read(USER, "alice") == (120, 0, 0)
    let_through = Settlement(chs, "open1", 40, 0, held=False)  # store was down
    for _ in range(2):
        store.settle([let_through])
    assert store.read(USER, "alice") == (160, 0, 0)


def test_a_reservation_whose_reply_was_lost_is_found_by_its_id(store):
    """The script ran but the caller timed out: it let the call through holding nothing; its
    settlement, with nothing held, finds the orphan by its id and releases it."""
    chs = charges(400)
    assert store.reserve("orphan", 600, chs).status == RESERVED  # the reply never reached the caller
    for _ in range(2):
        store.settle([Settlement(chs, "orphan", 90, 0, held=False)])
    assert store.read(USER, "alice") == (90, 0, 0) and store.read(DEPARTMENT, "sales") == (90, 0, 0)


def test_a_refused_call_whose_reservation_reply_was_lost_gives_the_reservation_back(store):
    """Fail closed after a timeout: nothing held as far as the caller knows, no usage: a cancel."""
    chs = charges(400)
    assert store.reserve("lost", 600, chs).status == RESERVED  # landed; the caller timed out
    for _ in range(2):
        store.settle([Settlement(chs, "lost", 0, 0, held=False)])
    assert store.read(USER, "alice") == (0, 0, 0)
    assert store.reserve("next", 600, charges(1000)).status == RESERVED


def test_marks_live_beside_the_usage_and_a_late_settlement_still_counts(store, redis_server, clock):
    """Settlements of calls let through during an outage leave marks, in their own zset: the usage
    hash (read whole at each bucket's first call and on each refusal) stays buckets and calls in flight."""
    chs = charges(5, user_limit=None, department="ops")
    store.settle([Settlement(chs, f"open{i}", 5, 0, held=False) for i in range(500)])
    client = redis_server.client()
    usage, marks = principal_keys(DEPARTMENT, "ops")
    assert client.zcard(marks) == 500 and client.hlen(usage) <= 8
    held = reserved(store, "long", 30, chs)
    clock.t += 31 + 5 * 3600  # reclaimed, then the call ends five hours later
    assert store.read(DEPARTMENT, "ops")[0] == 2500
    settle(store, held, chs, 7)
    assert store.read(DEPARTMENT, "ops")[0] == 2507


def test_the_store_records_its_key_layout_and_refuses_a_newer_one(redis_url, clock):
    """The layout marker: a fresh store gets this version's layout, an older one is raised to it, and a store a
    newer version wrote to is refused (every call gets the fail-open / fail-closed answer) with a message that
    says what to do; once the marker is back (the newer processes rolled back), the store is used again."""
    import redis

    from otel_tokens.quota.budget.store import LAYOUT, LAYOUT_KEY, StoreLayoutError, StoreUnavailableError

    raw = redis.Redis.from_url(redis_url)
    raw.delete(LAYOUT_KEY)
    store = RedisBudgetStore(redis_url, timeout=1.0, backoff=0.05, clock=clock)
    assert store.reserve("r1", 600, charges(10)).status == RESERVED
    assert raw.get(LAYOUT_KEY) == str(LAYOUT).encode()
    raw.set(LAYOUT_KEY, 1)
    assert RedisBudgetStore(redis_url, timeout=1.0, clock=clock).reserve("r2", 600, charges(10)).status == RESERVED
    assert raw.get(LAYOUT_KEY) == str(LAYOUT).encode()
    raw.set(LAYOUT_KEY, LAYOUT + 1)
    newer = RedisBudgetStore(redis_url, timeout=1.0, backoff=0.05, clock=clock)
    with pytest.raises(StoreLayoutError, match=rf"layout {LAYOUT + 1} .*this version reads layout {LAYOUT}: upgrade"):
        newer.reserve("r3", 600, charges(10))
    with pytest.raises(StoreUnavailableError, match="failed less than"):  # backing off: no round trip
        newer.reserve("r3", 600, charges(10))
    assert store.read(USER, "alice") == (20, 0, 2)  # a connected process keeps its connection's check
    raw.set(LAYOUT_KEY, LAYOUT)
    import time

    time.sleep(0.06)
    assert newer.reserve("r3", 600, charges(10)).status == RESERVED


def test_a_window_loaded_after_a_sweep_is_swept_before_it_refuses(store, clock):
    """A settlement carried from before a reload that added `concurrent` loads the principal with fewer windows
    (its 24 h turns and is swept); the reservation then loads the calls in flight, where a killed process's slot
    has expired: reclaimed before judging, not counted."""
    clock.t = B0
    old = (Charge(USER, "eve", 0, 0),)
    new = (Charge(USER, "eve", 0, 0), Charge(USER, "eve", 0, 0, 1, window="concurrent"))
    assert store.reserve("r0", 600, old, amount=(10, 0)).status == RESERVED  # a call running across the reload
    assert store.reserve("r1", 600, new, amount=(10, 0)).status == RESERVED  # its process killed: never settled
    clock.t = B0 + 301  # the lease ran out; a new 5-minute bucket
    assert store.reserve("r2", 600, new, [Settlement(old, "r0", 10, 0)], amount=(10, 0)).status == RESERVED
