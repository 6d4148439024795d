"""Rate and concurrency limits in budget mode (protect the GPU, not only the budget): a sliding minute of requests
and tokens and the calls in flight, reserved in the same round trip as the budget windows on a real Redis, against a
local model server that records what reached it."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from otel_tokens import QuotaExceededError, RateLimitExceededError, quota_status
from otel_tokens.quota.budget import mode as budget_mode
from otel_tokens.quota.budget import store as budget_store
from otel_tokens.quota.budget.store import RedisBudgetStore
from otel_tokens.quota.vocabulary import USER
from tests.support.budget import budget_app, run_budget_apps, write_quotas
from tests.support.openai_server import OpenAIServer

ROOT = Path(__file__).resolve().parents[2]
BIG = {"tokens": 10**9}


def _clocked(app, start: float = 1_000_000.0) -> list[float]:
    """The store's clock set by the test (Redis runs the scripts at this time): one-element list, advance it."""
    now = [start]
    app.recorder.enforcement.budget.store.clock = lambda: now[0]
    return now


def test_five_requests_a_minute_and_retry_after_to_the_second(tmp_path, redis_url):
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"minute": {"requests": 5}, "24h": BIG}})
    for app in budget_app(quotas, redis_url):
        now = _clocked(app)
        for _ in range(5):
            now[0] += 1.0
            app.ask("alice")  # at 1,000,001 .. 1,000,005
        now[0] += 1.0
        with pytest.raises(RateLimitExceededError) as caught:
            app.ask("alice")
        refusal = caught.value
        assert isinstance(refusal, QuotaExceededError) and refusal.http_status == 429
        assert (refusal.scope, refusal.principal, refusal.window, refusal.kind) == ("user", "alice", "minute",
                                                                                   "requests")
        # the first request (second 1,000,001) leaves the window when second 1,000,062 begins: 56 s from now
        assert refusal.retry_after == pytest.approx(56.0, abs=1e-3)
        app.ask("bob")  # another user is not limited by alice's minute
        now[0] += refusal.retry_after - 0.5
        with pytest.raises(RateLimitExceededError):
            app.ask("alice")
        now[0] += 0.5
        app.ask("alice")  # at the second Retry-After named
        assert app.decisions(window=True) == {("reject", "user", "minute"): 2}
        status = {(w.window, w.kind): w for w in quota_status(user_id="alice").windows}
        assert (status["minute", "requests"].used, status["minute", "requests"].limit) == (5, 5)
        assert status["minute", "requests"].resets_at is None  # sliding: no reset time
        app.held("alice")  # the queued settlements in the store: it now equals the exported metrics
        status = {(w.window, w.kind): w for w in quota_status(user_id="alice").windows}
        assert status["24h", "tokens"].used == app.metric_tokens("alice") > 0
        assert status["minute", "requests"].used == 5  # the first request left the minute; four and the last remain


def test_never_more_than_the_limit_in_any_60_seconds_and_refused_only_when_it_is_reached(tmp_path, redis_url):
    """200 simulated seconds of calls at random intervals: the served calls, checked against every 60 s interval;
    each refusal checked against the minute before it (1-second buckets: at most 1 s of slack)."""
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"minute": {"requests": 5}, "24h": BIG}})
    rng = random.Random(7)
    served, refused = [], []
    for app in budget_app(quotas, redis_url):
        now = _clocked(app)
        while now[0] < 1_000_200.0:
            now[0] += rng.choice((0.3, 1.0, 2.5, 6.0, 13.0))
            try:
                app.ask("alice")
                served.append(now[0])
            except RateLimitExceededError as refusal:
                refused.append((now[0], refusal.retry_after))
    assert len(served) > 10 and len(refused) > 10
    for t in served:
        assert sum(1 for s in served if t - 60 < s <= t) <= 5, t
    for t, retry in refused:
        assert sum(1 for s in served if t - 61 < s <= t) >= 5, t
        assert retry is not None and 0 < retry <= 61
        assert sum(1 for s in served if t + retry - 60 < s <= t) <= 4, (t, retry)  # room by then


def test_two_calls_in_flight_at_most_across_three_processes(tmp_path, redis_url):
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"concurrent": 2, "24h": BIG},
                                               "overrides": {"bob": {"concurrent": 3}}})
    env = {"OTEL_TOKENS_QUOTA_FILE": str(quotas), "OTEL_TOKENS_BUDGET_STORE": redis_url, "MAX_TOKENS": "16",
           "BUDGET_USER": "alice", "OTHER_USER": "bob", "CALLERS": "3", "CALLS": "8", "OTHER_CALLS": "3"}
    with OpenAIServer(delay_s=0.15) as server:
        results = run_budget_apps(server, [env, env, env])
    assert server.max_in_flight["alice"] == 2  # never 3 at the server, and the limit was reached
    assert server.max_in_flight["bob"] <= 3  # one thread in each process, never refused
    refusals = sum((Counter(r["refused_by"]) for r in results), Counter())
    outcomes = sum((Counter(r["outcomes"]) for r in results), Counter())
    assert set(refusals) == {"user alice concurrent"} and refusals["user alice concurrent"] >= 10
    assert outcomes["alice served"] + outcomes["alice refused"] == 3 * 3 * 8 and outcomes["alice served"] > 0
    assert outcomes["bob served"] == 9 and outcomes["bob refused"] == 0
    assert RedisBudgetStore(redis_url).read(USER, "alice", "concurrent")[0] == 0  # every slot given back


def test_tokens_a_minute_never_exceeded_at_the_server_with_max_tokens(tmp_path, redis_url):
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"minute": {"tokens": 1500}, "24h": BIG}})
    env = {"OTEL_TOKENS_QUOTA_FILE": str(quotas), "OTEL_TOKENS_BUDGET_STORE": redis_url, "MAX_TOKENS": "32",
           "BUDGET_USER": "alice", "OTHER_USER": "bob", "CALLERS": "3", "REFUSALS": "3", "OTHER_CALLS": "3"}
    with OpenAIServer() as server:
        started = time.monotonic()
        results = run_budget_apps(server, [env, env, env])
        assert time.monotonic() - started < 50  # all inside one minute: the whole run is one window
        reply = server.completion_tokens("gpt-4o", server.reply)
        alice = sum(server.prompt_tokens("gpt-4o", r.body["messages"]) + reply
                    for r in server.requests if "user.id=alice" in r.headers.get("baggage", ""))
    refusals = sum((Counter(r["refused_by"]) for r in results), Counter())
    assert refusals == {"user alice minute": 3 * 3 * 3}
    assert 1500 - 9 * (86 + 32) < alice <= 1500  # never past the minute; refused only when a worst case did not fit
    assert sum(r["tokens"].get("alice", 0) for r in results) == alice


def test_a_long_call_keeps_its_slot_by_renewing_its_lease(tmp_path, redis_url, monkeypatch):
    """With a 1.5 s lease, a call of 4 s still holds the only slot at 3.5 s (its process renewed it); then the slot
    is free again. A process killed mid-call would have held it only for the lease."""
    monkeypatch.setattr(budget_store, "LEASE", 1.5)
    monkeypatch.setattr(budget_mode, "LEASE", 1.5)
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"concurrent": 1, "24h": BIG}})
    for app in budget_app(quotas, redis_url, server={"delay_s": 4.0}):
        long_call = threading.Thread(target=app.ask, args=("alice",))
        long_call.start()
        time.sleep(0.5)
        for _ in range(4):
            with pytest.raises(RateLimitExceededError) as caught:
                app.ask("alice")
            assert caught.value.window == "concurrent" and caught.value.retry_after == 1
            time.sleep(0.9)
        long_call.join()
        app.server.delay_s = 0.0
        app.ask("alice")
        assert app.server.max_in_flight["alice"] == 1


def test_a_killed_process_frees_its_slot_after_the_lease_not_the_reservation_ttl(tmp_path, redis_url):
    """A process killed mid-call (SIGKILL: no settlement, no atexit) held alice's only slot; another process is
    refused until the slot's lease runs out (15 s after its last renewal), then served: not after the 600 s of
    reservation_ttl."""
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"concurrent": 1, "24h": BIG}})
    with OpenAIServer(delay_s=60.0) as hung:
        base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        proc = subprocess.Popen([sys.executable, "-m", "tests.support.budget_app"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={
                                    **base, "OPENAI_BASE_URL": hung.base_url, "OTEL_TOKENS_QUOTA_FILE": str(quotas),
                                    "OTEL_TOKENS_BUDGET_STORE": redis_url, "BUDGET_USER": "alice",
                                    "OTHER_USER": "bob", "CALLERS": "1", "CALLS": "1", "OTHER_CALLS": "0"})
        try:
            deadline = time.monotonic() + 30
            while hung.in_flight.get("alice", 0) == 0:
                assert time.monotonic() < deadline and proc.poll() is None, "the call never reached the server"
                time.sleep(0.05)
            time.sleep(6)  # past one renewal: the lease then runs from a renewal, not from the reservation
        finally:
            proc.kill()
            proc.wait(10)
        killed = time.monotonic()
        for app in budget_app(quotas, redis_url):
            refused = 0
            while True:
                try:
                    app.ask("alice")
                    break
                except RateLimitExceededError as refusal:
                    assert refusal.window == "concurrent"
                    refused += 1
                    assert time.monotonic() - killed < budget_store.LEASE + 3, "the slot outlived its lease"
                    time.sleep(0.25)
            freed = time.monotonic() - killed
    assert refused > 0 and budget_store.LEASE - 5 - 1 <= freed <= budget_store.LEASE + 3, freed


def test_calls_refused_while_the_store_is_down_count_no_request(tmp_path, redis_url):
    """fail_closed, the store down for 5 calls: none reached a server, so none counts in the minute after."""
    from otel_tokens.quota.budget.store import StoreUnavailableError

    quotas = write_quotas(tmp_path / "q.yml", {"default": {"minute": {"requests": 3}, "24h": BIG}})
    for app in budget_app(quotas, redis_url, fail_closed=True):
        budget = app.recorder.enforcement.budget
        real = budget.store.reserve

        def down(*args, **kwargs):
            raise StoreUnavailableError("down (the test)")

        budget.store.reserve = down
        for _ in range(5):
            with pytest.raises(QuotaExceededError):
                app.ask("alice")
        budget.store.reserve = real
        budget.flush()
        assert app.server.requests == []
        status = {(w.window, w.kind): w.used for w in quota_status(user_id="alice").windows}
        assert status["minute", "requests"] == 0
        for _ in range(3):
            app.ask("alice")  # the minute's three requests are all there


def test_the_minute_and_the_slots_refuse_at_their_limit_whatever_the_rules(tmp_path, redis_url):
    """Rules loosen budgets (a warning-level reject, a scope with only a downgrade rule), never the GPU's limits."""
    from otel_tokens.config.settings import GuardRule

    quotas = write_quotas(tmp_path / "q.yml", {"default": {"minute": {"requests": 5}, "24h": BIG}})
    rules = (GuardRule("user", "reject", "warning"),)
    for app in budget_app(quotas, redis_url, rules=rules):
        for _ in range(5):
            app.ask("alice")  # not 4: the minute refuses at 5, not at the warning ratio
        with pytest.raises(RateLimitExceededError):
            app.ask("alice")
    quotas = write_quotas(tmp_path / "q2.yml", {"default": {"minute": {"requests": 2}, "24h": BIG}})
    rules = (GuardRule("user", "downgrade", "critical", (("gpt-4o", "gpt-4o-mini"),)),)
    for app in budget_app(quotas, redis_url, rules=rules):
        app.ask("bob")
        app.ask("bob")
        with pytest.raises(RateLimitExceededError):
            app.ask("bob")


def test_a_call_longer_than_a_minute_leaves_the_minute_with_the_second_it_was_sent(tmp_path, redis_url):
    """A generation of 100 s sent at t=0 stops counting in the minute at t=61, not 60 s after it ends."""
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"minute": {"requests": 1}, "24h": BIG}})
    for app in budget_app(quotas, redis_url):
        budget = app.recorder.enforcement.budget
        now = _clocked(app)
        estimate = budget_estimate(app)
        first, held = budget.reserve("openai", "gpt-4o", {"user.id": "alice", "department": "d"}, estimate)
        assert first is None
        now[0] += 30
        refused, _ = budget.reserve("openai", "gpt-4o", {"user.id": "alice", "department": "d"}, estimate)
        assert refused is not None and refused.error().retry_after == pytest.approx(31, abs=1e-3)
        now[0] += 40  # t=70: the first call is still running, but it was sent more than a minute ago
        second, held2 = budget.reserve("openai", "gpt-4o", {"user.id": "alice", "department": "d"}, estimate)
        assert second is None
        now[0] += 30
        budget.settle(held, 100, None)  # the first ends at t=100: it counts in no minute now
        budget.settle(held2, 100, None)
        budget.flush()
        now[0] += 32  # t=132: the second (sent at t=70) has left too
        third, _ = budget.reserve("openai", "gpt-4o", {"user.id": "alice", "department": "d"}, estimate)
        assert third is None


def budget_estimate(app):
    from otel_tokens.recording.call import UsageEstimate

    return UsageEstimate(input_tokens=10, max_output_tokens=10)
