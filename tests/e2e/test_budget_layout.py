"""Budget mode's Redis layout 3 on a real redis-server: every window of a principal in its one hash (the windows'
state packed in one field), and the takeover of what layout 2 kept (the scope's own window in the same hash, any
other in a key of its own with its own marks) the first time a window is charged or read: an upgrade loses no usage,
no expiry and no settlement's once-only mark."""

from __future__ import annotations

import redis

from otel_tokens.quota.budget.store import (
    REFUSED,
    RESERVED,
    Charge,
    RedisBudgetStore,
    Settlement,
    principal_keys,
)
from otel_tokens.quota.vocabulary import DEPARTMENT, USER
from tests.support.budget import packed_windows
from tests.support.budget_store import Clock, local_time, use

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC, a 5-minute boundary





def test_every_window_of_a_principal_lives_in_its_one_hash_and_layout_2_keys_are_taken_over(redis_url):
    """Layout 3: one hash per principal (one HMGET and one HSET per call whatever the windows), the scope's own
    window unprefixed as in every layout, the others under their name. A window that layout 2 kept in a key of its
    own (`<usage>:day`) is taken over at its first use, so an upgrade loses none of the day's usage."""
    clock = Clock(local_time("Asia/Shanghai", 2026, 12, 7, 12, 0))
    store = RedisBudgetStore(redis_url, timeout=1.0, clock=clock)
    store.set_zone("Asia/Shanghai")
    raw = redis.Redis.from_url(redis_url)
    usage, _ = principal_keys(USER, "wang")
    day = int((clock.t + 8 * 3600) // 86400)
    raw.hset(f"{usage}:day", mapping={"lo": day, "T": 70, "C": 0, f"t{day}": 70, f"c{day}": 0, "id": "wang"})
    raw.hset(f"{usage}:day", mapping={"r:gone": f"{day}:5:0:{clock.t - 1:.3f}"})  # held by a killed process
    raw.hincrby(f"{usage}:day", "T", 5)
    raw.hincrby(f"{usage}:day", f"t{day}", 5)
    charges = [Charge(USER, "wang", 10, 0, window="24h"), Charge(USER, "wang", 10, 0, 100, window="day")]
    refused = store.reserve("a", 600, [Charge(USER, "wang", 31, 0, window="24h"),
                                       Charge(USER, "wang", 31, 0, 100, window="day")])
    assert refused.status == REFUSED and refused.used == 70  # 70 taken over, the dead call's 5 reclaimed
    use(store, charges[1], 20, "b")
    assert store.read(USER, "wang", "day") == (90, 0, 0) and not raw.exists(f"{usage}:day")
    assert store.reserve("c", 600, charges).status == RESERVED
    fields = {f.decode() for f in raw.hkeys(usage)}
    assert fields == {"S", "r:c", "day.r:c", "id"}, fields  # the windows packed in S, the calls in flight
    state = packed_windows(raw.hget(usage, "S"))
    assert state["day."] == (day, 100, 0, 100, 0) and state[""][1] == 10  # the 24 h was charged only by c
    assert raw.ttl(usage) > 86400  # the day's expiry, longer than the own window's


def test_a_read_takes_a_window_over_for_good(redis_url):
    """quota_status reads before a principal's first call after the upgrade: the taken-over window is written at
    once (the old key is gone), not only when a call charges it."""
    store = RedisBudgetStore(redis_url, timeout=1.0, clock=Clock(T0))
    raw = redis.Redis.from_url(redis_url)
    usage, _ = principal_keys(DEPARTMENT, "ops")
    raw.hset(usage, mapping={"lo": 2027 * 12, "T": 40, "C": 0, f"t{2027 * 12}": 40, f"c{2027 * 12}": 0, "id": "ops"})
    raw.hset(f"{usage}:year", mapping={"lo": 2027, "T": 900, "C": 0, "t2027": 900, "c2027": 0, "id": "ops"})
    for _ in range(2):
        assert store.peek_many([(DEPARTMENT, "ops", "month"), (DEPARTMENT, "ops", "year")]) == [(40, 0), (900, 0)]
    assert packed_windows(raw.hget(usage, "S")) == {"": (2027 * 12, 40, 0, 40, 0), "year.": (2027, 900, 0, 900, 0)}
    assert not raw.exists(f"{usage}:year") and raw.ttl(usage) > 2851200  # the year's expiry, longer than the month's


def test_a_takeover_keeps_the_longest_windows_expiry_and_the_old_marks(redis_url):
    """The user's own 24 h (expiring in 24 h 10 min) and a year kept in its own key: after the takeover the hash
    lives as long as the year does; a reservation layout 2 reclaimed (its mark in the year's own marks key) still
    counts when its settlement comes late, once."""
    clock = Clock(T0 + 60)
    store = RedisBudgetStore(redis_url, timeout=1.0, clock=clock)
    raw = redis.Redis.from_url(redis_url)
    usage, marks = principal_keys(USER, "wang")
    b = int(clock.t // 300)
    raw.hset(usage, mapping={"lo": b - 288, "T": 500, "C": 0, f"t{b}": 500, f"c{b}": 0, "id": "wang"})
    raw.expire(usage, 87000)
    raw.hset(f"{usage}:year", mapping={"lo": 2027, "T": 900, "C": 0, "t2027": 900, "c2027": 0, "id": "wang"})
    raw.expire(f"{usage}:year", 31795200)
    raw.zadd(f"{usage}:year:marks", {"x:late": clock.t + 86000})
    charges = (Charge(USER, "wang", 0, 0, window="24h"), Charge(USER, "wang", 0, 0, 10_000, window="year"))
    assert store.reserve("c", 600, charges, amount=(10, 0)).status == RESERVED
    assert raw.ttl(usage) > 31_000_000 and not raw.exists(f"{usage}:year", f"{usage}:year:marks")
    assert raw.zscore(marks, "x:year.late") is not None
    for _ in range(2):  # sent twice: counts once
        store.settle([Settlement(charges, "late", 70, 0)])
    # the 24 h has no record of it (none was made up here): already applied there
    assert store.read(USER, "wang", "year") == (980, 0, 1) and store.read(USER, "wang") == (510, 0, 1)
