"""The accounting on its own: per-label-set totals observed as cumulative counters, histogram points
recorded in the same collection, and the label caps."""

from __future__ import annotations

import threading
import time

import pytest

from otel_tokens import names
from otel_tokens.config.settings import OTHER_VALUE
from otel_tokens.pricing import Cost
from otel_tokens.recording.accounting import Accounting
from otel_tokens.recording.call import CallRecord
from tests.support.telemetry import make_telemetry


def _record(model: str = "m", input_tokens: int | None = 10, output_tokens: int | None = 4,
            error_type: str | None = None, source: str | None = names.SOURCE_REPORTED) -> CallRecord:
    return CallRecord(names.OPERATION_CHAT, "openai", model, input_tokens=input_tokens, output_tokens=output_tokens,
                      usage_source=source, error_type=error_type, server_address="127.0.0.1", server_port=8000)


def _points(tel, metric):
    return {tuple(sorted(p.attributes.items())): p.value for p in tel.metrics().get(metric, [])}


def test_counters_are_cumulative_per_label_set_and_token_type():
    tel, _, meter_provider = make_telemetry()
    accounting = Accounting(meter_provider.get_meter("t"))
    alice = {names.USER_ID: "alice", names.DEPARTMENT: "support"}
    for _ in range(3):
        accounting.add(_record(), 0.25, alice, Cost(0.001, 0.002, "USD"))
    accounting.add(_record(error_type="APIError", input_tokens=None, output_tokens=None, source=None), 0.1, alice)
    tokens = _points(tel, names.METRIC_LLM_TOKEN_USAGE)
    base = {names.GEN_AI_OPERATION_NAME: "chat", names.GEN_AI_PROVIDER_NAME: "openai",
            names.GEN_AI_REQUEST_MODEL: "m", names.LLM_USAGE_SOURCE: "reported", **alice}
    assert tokens == {tuple(sorted({**base, names.GEN_AI_TOKEN_TYPE: "input"}.items())): 30,
                      tuple(sorted({**base, names.GEN_AI_TOKEN_TYPE: "output"}.items())): 12}
    costs = _points(tel, names.METRIC_LLM_COST)
    assert sorted(costs.values()) == pytest.approx([0.003, 0.006])
    assert all(dict(k)[names.CURRENCY] == "USD" for k in costs)
    requests = {dict(k).get(names.ERROR_TYPE): v for k, v in _points(tel, names.METRIC_LLM_REQUESTS).items()}
    assert requests == {None: 3, "APIError": 1}
    # cumulative: a second collection reports the same totals, not the difference
    assert sum(_points(tel, names.METRIC_LLM_TOKEN_USAGE).values()) == 42
    assert accounting.totals()["requests"] == 4
    accounting.close()


def test_histogram_points_land_in_the_collection_that_follows_the_call():
    tel, _, meter_provider = make_telemetry()
    accounting = Accounting(meter_provider.get_meter("t"))
    record = _record()
    record.time_to_first_chunk_s = 0.05
    accounting.add(record, 0.5, {})
    metrics = tel.metrics()
    usage = {p.attributes[names.GEN_AI_TOKEN_TYPE]: (p.count, p.sum) for p in metrics[names.METRIC_TOKEN_USAGE]}
    assert usage == {"input": (1, 10), "output": (1, 4)}
    (duration,) = metrics[names.METRIC_OPERATION_DURATION]
    assert (duration.count, duration.sum) == (1, 0.5) and duration.attributes[names.SERVER_PORT] == 8000
    assert names.USER_ID not in duration.attributes  # semconv histograms carry no attribution
    (first,) = metrics[names.METRIC_TIME_TO_FIRST_CHUNK]
    assert first.sum == 0.05
    accounting.close()


def test_a_flood_of_values_folds_past_the_cap_and_keeps_the_totals():
    tel, _, meter_provider = make_telemetry()
    accounting = Accounting(meter_provider.get_meter("t"), cardinality_limit=3)
    for i in range(10):
        accounting.add(_record(input_tokens=1, output_tokens=0), 0.01, {names.USER_ID: f"u{i}"})
    users = {}
    for key, value in _points(tel, names.METRIC_LLM_TOKEN_USAGE).items():
        attrs = dict(key)
        if attrs[names.GEN_AI_TOKEN_TYPE] == "input":
            users[attrs[names.USER_ID]] = value
    assert users == {"u0": 1, "u1": 1, "u2": 1, OTHER_VALUE: 7}
    assert accounting.labels.folded() == {names.USER_ID: 7, names.DEPARTMENT: 0}
    accounting.close()


def test_concurrent_adds_lose_nothing():
    tel, _, meter_provider = make_telemetry()
    accounting = Accounting(meter_provider.get_meter("t"))

    def work(user: str) -> None:
        for _ in range(2000):
            accounting.add(_record(input_tokens=2, output_tokens=1), 0.001, {names.USER_ID: user})

    threads = [threading.Thread(target=work, args=(f"u{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(_points(tel, names.METRIC_LLM_TOKEN_USAGE).values()) == 4 * 2000 * 3
    assert sum(p.count for p in tel.metrics()[names.METRIC_OPERATION_DURATION]) == 8000
    accounting.close()


def test_one_collection_reports_tokens_cost_and_requests_of_the_same_instant():
    """The three counters are read at one point per collection: while calls keep landing, every
    collection's tokens, cost and requests describe the same calls (10 input tokens, 0.001 each)."""
    tel, _, meter_provider = make_telemetry()
    accounting = Accounting(meter_provider.get_meter("t"))
    alice = {names.USER_ID: "alice", names.DEPARTMENT: "support"}
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            for _ in range(50):
                accounting.add(_record(), 0.01, alice, Cost(0.001, 0.0, "USD"))
            time.sleep(0.0005)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        seen: list[tuple[int, int, float]] = []
        deadline = time.monotonic() + 30
        while len({requests for requests, _, _ in seen}) < 60 and time.monotonic() < deadline:
            time.sleep(0.002)  # let calls land between collections
            metrics = tel.metrics()
            requests = sum(p.value for p in metrics.get(names.METRIC_LLM_REQUESTS, []))
            inputs = sum(p.value for p in metrics.get(names.METRIC_LLM_TOKEN_USAGE, [])
                         if p.attributes[names.GEN_AI_TOKEN_TYPE] == "input")
            cost = sum(p.value for p in metrics.get(names.METRIC_LLM_COST, [])
                       if p.attributes[names.GEN_AI_TOKEN_TYPE] == "input")
            seen.append((requests, inputs, round(cost, 6)))
    finally:
        stop.set()
        thread.join()
    assert all(inputs == 10 * requests and cost == round(0.001 * requests, 6) for requests, inputs, cost in seen), seen
    assert len({requests for requests, _, _ in seen}) >= 60  # calls landed between collections


def test_quota_counters_hold_each_principals_total_over_models_types_and_sources():
    """llm.quota.tokens / llm.quota.cost: one series per principal, the accounting counters' totals summed over
    model, token type, operation and source, read in the same collection."""
    tel, _, meter_provider = make_telemetry()
    accounting = Accounting(meter_provider.get_meter("t"))
    alice = {names.USER_ID: "alice", names.DEPARTMENT: "support"}
    bob = {names.USER_ID: "bob", names.DEPARTMENT: "research"}
    accounting.add(_record("m1"), 0.1, alice, Cost(0.001, 0.002, "USD"))
    accounting.add(_record("m2", 7, 3, source=names.SOURCE_ESTIMATED), 0.1, alice, Cost(0.01, 0.02, "USD"))
    accounting.add(_record("m1", 5, None), 0.1, bob)  # no price: tokens, no cost
    accounting.add(_record("m1", None, None, error_type="APIError", source=None), 0.1, bob)
    tokens = _points(tel, names.METRIC_QUOTA_TOKENS)
    assert tokens == {tuple(sorted(alice.items())): 14 + 10, tuple(sorted(bob.items())): 5}
    cost = _points(tel, names.METRIC_QUOTA_COST)
    assert cost == {tuple(sorted({**alice, names.CURRENCY: "USD"}.items())): pytest.approx(0.033)}
    by_user = {}
    for key, value in _points(tel, names.METRIC_LLM_TOKEN_USAGE).items():
        by_user[dict(key)[names.USER_ID]] = by_user.get(dict(key)[names.USER_ID], 0) + value
    assert by_user == {"alice": 24, "bob": 5}
    accounting.close()


def test_quota_counters_fold_past_the_series_limit_on_their_own_and_keep_the_totals():
    """The accounting metrics fold at their own series count (models x token types per user); the per-principal
    counters only past the series limit in principals, user first, departments and totals kept."""
    tel, _, meter_provider = make_telemetry(series_limit=200)
    accounting = Accounting(meter_provider.get_meter("t"), series_limit=200)
    for i in range(150):  # 150 principals x 2 models x 2 token types = 600 accounting label sets: over 200
        for model in ("m1", "m2"):
            accounting.add(_record(model, 1, 1), 0.01, {names.USER_ID: f"u{i}", names.DEPARTMENT: f"d{i % 3}"})
    quota = _points(tel, names.METRIC_QUOTA_TOKENS)
    assert OTHER_VALUE not in {dict(k)[names.USER_ID] for k in quota}, "150 principals fit a limit of 200"
    assert len(quota) == 150 and set(quota.values()) == {4}
    for i in range(150, 400):
        accounting.add(_record("m1", 1, 1), 0.01, {names.USER_ID: f"u{i}", names.DEPARTMENT: f"d{i % 3}"})
    quota = _points(tel, names.METRIC_QUOTA_TOKENS)
    assert all("otel.metric.overflow" not in dict(k) for k in quota)
    assert len(quota) <= 200 and sum(quota.values()) == 150 * 4 + 250 * 2
    departments: dict[str, int] = {}
    for key, value in quota.items():
        departments[dict(key)[names.DEPARTMENT]] = departments.get(dict(key)[names.DEPARTMENT], 0) + value
    assert departments == {f"d{d}": sum(4 if i < 150 else 2 for i in range(400) if i % 3 == d) for d in range(3)}
    assert quota[tuple(sorted({names.USER_ID: "u7", names.DEPARTMENT: "d1"}.items()))] == 4, "earlier users kept"
    assert accounting.principals.folded_calls > 0
    accounting.close()
