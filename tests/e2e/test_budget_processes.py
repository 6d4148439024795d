"""Budget mode's guarantee across processes: several processes x several threads on one real Redis,
each a plain app configured by the two variables, against one OpenAI-compatible server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from otel_tokens.quota.budget.store import RedisBudgetStore
from otel_tokens.quota.vocabulary import USER
from tests.support.budget import run_budget_apps, write_quotas
from tests.support.openai_server import OpenAIServer

ROOT = Path(__file__).resolve().parents[2]


def served_by_server(server: OpenAIServer) -> Counter[str]:
    """Tokens the server answered, per user, by its own count (the user from the baggage it received)."""
    out: Counter[str] = Counter()
    for request in server.requests:
        baggage = dict(item.split("=", 1) for item in request.headers.get("baggage", "").split(",") if "=" in item)
        tokens = (server.prompt_tokens("gpt-4o", request.body["messages"])
                  + server.completion_tokens("gpt-4o", server.reply))
        out[baggage.get("user.id", "?")] += tokens
    return out


def test_twelve_callers_in_three_processes_never_take_a_user_past_1000_tokens(tmp_path, redis_url):
    """The issue's acceptance run: a 1,000-token quota, 3 processes x 4 threads, max_tokens set."""
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 1000}, "overrides": {"bob": {"tokens": 10**6}}})
    with OpenAIServer() as server:
        env = {"OTEL_TOKENS_QUOTA_FILE": str(quotas), "OTEL_TOKENS_BUDGET_STORE": redis_url, "BUDGET_USER": "alice",
               "OTHER_USER": "bob", "CALLERS": "4", "MAX_TOKENS": "32", "REFUSALS": "3", "OTHER_CALLS": "5"}
        results = run_budget_apps(server, [env] * 3)
        served = served_by_server(server)
    outcomes = sum((Counter(r["outcomes"]) for r in results), Counter())
    assert served["alice"] <= 1000  # never beyond the limit, whatever the interleaving
    assert served["alice"] > 1000 - 12 * (86 + 32)  # and refused only when a worst case no longer fit
    assert outcomes["alice refused"] == 3 * 4 * 3
    assert outcomes["bob served"] == 15 and outcomes["bob refused"] == 0  # other principals unaffected
    tokens, _, in_flight = RedisBudgetStore(redis_url).read(USER, "alice")
    metrics = sum(r["tokens"].get("alice", 0) for r in results)
    assert tokens == metrics == served["alice"] and in_flight == 0  # store = metrics = server, all settled


def test_without_max_tokens_the_overshoot_is_bounded_by_the_default_per_call_in_flight(tmp_path, redis_url):
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 1000}})
    config = tmp_path / "otel-tokens.yaml"
    config.write_text(yaml.safe_dump({"guard": {"default_max_output_tokens": 8}}))
    with OpenAIServer() as server:
        reply = server.completion_tokens("gpt-4o", server.reply)  # what each call really generates
        env = {"OTEL_TOKENS_QUOTA_FILE": str(quotas), "OTEL_TOKENS_BUDGET_STORE": redis_url,
               "OTEL_TOKENS_CONFIG": str(config), "BUDGET_USER": "carol", "OTHER_USER": "dave", "CALLERS": "4",
               "MAX_TOKENS": "", "REFUSALS": "2", "OTHER_CALLS": "1"}
        results = run_budget_apps(server, [env] * 3)
        served = served_by_server(server)
    assert reply > 8
    assert served["carol"] <= 1000 + 12 * (reply - 8)  # at most (true - reserved) per call in flight
    assert RedisBudgetStore(redis_url).read(USER, "carol")[0] == served["carol"] == sum(
        r["tokens"].get("carol", 0) for r in results)


def test_a_killed_process_holds_its_reservations_only_until_their_ttl(tmp_path, redis_url):
    """SIGKILL mid-call: nothing settles its reservations; after `reservation_ttl` they are reclaimed."""
    import signal
    import time

    quotas = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 1000}})
    config = tmp_path / "otel-tokens.yaml"
    config.write_text(yaml.safe_dump({"guard": {"reservation_ttl": 10}}))
    store = RedisBudgetStore(redis_url)
    with OpenAIServer(delay_s=15) as server:  # every call hangs: the process dies holding its reservations
        base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        proc = subprocess.Popen([sys.executable, "-m", "tests.support.budget_app"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={
                                    **base, "OPENAI_BASE_URL": server.base_url, "OTEL_TOKENS_QUOTA_FILE": str(quotas),
                                    "OTEL_TOKENS_BUDGET_STORE": redis_url, "OTEL_TOKENS_CONFIG": str(config),
                                    "BUDGET_USER": "mallory", "OTHER_USER": "x", "CALLERS": "4", "MAX_TOKENS": "100",
                                    "REFUSALS": "1", "OTHER_CALLS": "0"})
        try:
            deadline = time.monotonic() + 60
            while store.read(USER, "mallory")[2] < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            held_at = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            tokens, _, in_flight = store.read(USER, "mallory")
            assert in_flight == 4 and tokens == 4 * (86 + 100)  # four worst cases held by a dead process
            time.sleep(max(0.0, held_at + 10.5 - time.monotonic()))
            assert store.read(USER, "mallory") == (0, 0, 0)  # reclaimed: the whole quota is free again
        finally:
            if proc.poll() is None:
                proc.kill()
