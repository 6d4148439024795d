"""`quota_status()`: where a user and their department stand, per window, from budget mode's store (a real
redis-server), as a front end would ask before its users are refused."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import redis

from otel_tokens import QuotaExceededError, quota_status, usage_context
from otel_tokens.quota.calendar import load_zone
from tests.support.budget import budget_app, write_quotas


def _next_midnight(zone: str) -> datetime:
    now = datetime.now(load_zone(zone))
    return datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), load_zone(zone))


def test_each_window_with_a_limit_is_reported_as_the_store_counts_it(tmp_path, redis_url):
    quota_file = write_quotas(tmp_path / "q.yml",
                              {"default": {"24h": {"tokens": 5000}, "day": {"tokens": 400}, "month": {"cost": 1}},
                               "overrides": {"bob": {"day": {"tokens": 100000}}}},
                              {"default": {"month": {"tokens": 100000}, "year": {"cost": 50}}},
                              warning_ratio=0.5, timezone="Asia/Shanghai")
    for app in budget_app(quota_file, redis_url):
        assert quota_status("alice", "sales").windows[0].used == 0  # known before any call
        app.ask("alice", department="sales")
        app.ask("alice", department="sales")
        app.recorder.enforcement.budget.flush()
        tokens, cost = app.metric_tokens("alice"), app.metric_cost("alice")
        status = quota_status(user_id="alice", department="sales")
        assert status.available and status.warning_ratio == 0.5
        seen = {(w.scope, w.principal, w.window, w.kind): (w.used, w.limit) for w in status.windows}
        assert seen == {("user", "alice", "24h", "tokens"): (tokens, 5000),
                        ("user", "alice", "day", "tokens"): (tokens, 400),
                        ("user", "alice", "month", "cost"): (pytest.approx(cost), 1),
                        ("department", "sales", "month", "tokens"): (tokens, 100000),
                        ("department", "sales", "year", "cost"): (pytest.approx(cost), 50)}
        day = next(w for w in status.windows if w.window == "day")
        assert (day.remaining, day.ratio) == (400 - tokens, tokens / 400)
        assert day.resets_at == _next_midnight("Asia/Shanghai") and day.resets_at.utcoffset() == timedelta(hours=8)
        assert next(w for w in status.windows if w.window == "24h").resets_at is None  # rolling
        assert next(w for w in status.windows if w.kind == "cost").currency == "USD"
        assert status.nearest() == day and status.warning is (tokens / 400 >= 0.5)
        with usage_context(user_id="alice", department="sales"):
            assert quota_status() == status  # the principals a call made here would be charged as
        # what the status says is what refuses: the day's remaining tokens run out first
        with pytest.raises(QuotaExceededError) as caught:
            for _ in range(20):
                app.ask("alice", department="sales")
        assert caught.value.window == "day"
        refused_at = next(w for w in quota_status("alice", "sales").windows if w.window == "day")
        assert refused_at.used == app.metric_tokens("alice") and refused_at.remaining < 116  # one call's worst case
        assert refused_at.used > 0.5 * 400 and quota_status("alice", "sales").warning
        # an override of one window keeps the default's others; no call yet: nothing used, every limit known
        keys = redis.Redis.from_url(redis_url).dbsize()
        bob = {(w.window, w.kind): (w.used, w.limit) for w in quota_status("bob", "ops").windows if w.scope == "user"}
        assert bob == {("24h", "tokens"): (0, 5000), ("day", "tokens"): (0, 100000), ("month", "cost"): (0, 1)}
        assert redis.Redis.from_url(redis_url).dbsize() == keys  # asking about someone never charged writes nothing


def test_without_budget_mode_or_with_its_store_down_the_status_is_unavailable_not_an_error(tmp_path, redis_url,
                                                                                          redis_server):
    assert quota_status("alice").available is False  # nothing instrumented
    quota_file = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 400}})
    for app in budget_app(quota_file, redis_url):
        assert quota_status("alice").available
        store = app.recorder.enforcement.budget.store
        redis_server.stop()
        try:
            status = quota_status("alice")
            assert (status.available, status.windows) == (False, ())
            # a failed status read starts no backoff: the calls of this process still ask the store first
            assert store._down_until == 0.0
        finally:
            redis_server.start()
