"""Attribution: usage_context across threads, asyncio tasks and generators, and the Baggage fallback."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from opentelemetry import baggage, context

from otel_tokens import current_attribution, names, usage_context
from tests.support import tiny_models as tm
from tests.support.tiny_models import forcing


def test_concurrent_threads_and_tasks_attribute_every_token_to_the_right_user(telemetry):
    model = tm.gpt2()
    expected: dict[str, tuple[int, int]] = {}

    def work(user: str, prompt_len: int, new_tokens: int) -> None:
        with usage_context(user_id=user, department="dept-" + user[-1]):
            for _ in range(3):
                ids = torch.full((1, prompt_len), 5)
                model.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                               logits_processor=forcing(prompt_len, [11] * new_tokens))

    threads = []
    for i in range(8):
        user = f"thread-user-{i}"
        expected[user] = (3 * (2 + i), 3 * (1 + i % 4))
        threads.append(threading.Thread(target=work, args=(user, 2 + i, 1 + i % 4)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    async def task(user: str, prompt_len: int, new_tokens: int) -> None:
        with usage_context(user_id=user, department="dept-" + user[-1]):
            for _ in range(3):
                await asyncio.sleep(0)  # interleave the tasks between calls
                await asyncio.to_thread(
                    model.generate, torch.full((1, prompt_len), 5), max_new_tokens=new_tokens,
                    do_sample=False, logits_processor=forcing(prompt_len, [12] * new_tokens))

    async def main() -> None:
        await asyncio.gather(*(task(f"task-user-{i}", 3 + i, 2 + i % 3) for i in range(8)))

    for i in range(8):
        expected[f"task-user-{i}"] = (3 * (3 + i), 3 * (2 + i % 3))
    asyncio.run(main())

    totals = telemetry.token_totals(names.USER_ID, names.GEN_AI_TOKEN_TYPE)
    got = {user: (totals[(user, "input")], totals[(user, "output")]) for user in expected}
    assert got == expected
    assert len(telemetry.spans()) == 16 * 3
    departments = telemetry.token_totals(names.USER_ID, names.DEPARTMENT)
    assert all(dept == "dept-" + user[-1] for user, dept in departments)
    per_span = {(s.attributes[names.USER_ID], s.attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS])
                for s in telemetry.spans()}
    assert per_span == {(user, out // 3) for user, (_, out) in expected.items()}


def test_inbound_baggage_is_ignored_unless_trusted(telemetry):
    """A client's `baggage: user.id=alice` must not bill alice, nor fill the department the app left unset."""
    model = tm.gpt2()
    forged = baggage.set_baggage(names.USER_ID, "alice", baggage.set_baggage(names.DEPARTMENT, "support"))
    token = context.attach(forged)
    try:
        model.generate(torch.tensor([[5]]), max_new_tokens=1, logits_processor=forcing(1, [11]))
        with usage_context(user_id="carol"):
            model.generate(torch.tensor([[5]]), max_new_tokens=1, logits_processor=forcing(1, [11]))
    finally:
        context.detach(token)
    first, second = telemetry.spans()
    assert first.attributes[names.USER_ID] == first.attributes[names.DEPARTMENT] == names.UNATTRIBUTED
    assert second.attributes[names.USER_ID] == "carol" and second.attributes[names.DEPARTMENT] == names.UNATTRIBUTED


@pytest.fixture
def trusting():
    """Instrumented with trust_baggage on, as a model server behind the app runs."""
    from otel_tokens.config.settings import Settings
    from tests.support.telemetry import instrumented

    with instrumented(Settings(trust_baggage=True)) as tel:
        yield tel


def test_trusted_baggage_is_used_when_no_context_is_set(trusting):
    telemetry = trusting
    model = tm.gpt2()
    ctx = baggage.set_baggage(names.USER_ID, "bob", baggage.set_baggage(names.DEPARTMENT, "sales"))
    ctx = baggage.set_baggage(names.SESSION_ID, "s-1", ctx)
    token = context.attach(ctx)
    try:
        model.generate(torch.tensor([[5, 6]]), max_new_tokens=2, logits_processor=forcing(2, [11, 12]))
        with usage_context(user_id="carol"):  # an explicit context wins, per key
            model.generate(torch.tensor([[5]]), max_new_tokens=1, logits_processor=forcing(1, [11]))
    finally:
        context.detach(token)
    first, second = telemetry.spans()
    assert (first.attributes[names.USER_ID], first.attributes[names.DEPARTMENT]) == ("bob", "sales")
    assert first.attributes[names.SESSION_ID] == "s-1"
    assert (second.attributes[names.USER_ID], second.attributes[names.DEPARTMENT]) == ("carol", "sales")
    assert telemetry.token_totals(names.USER_ID, names.DEPARTMENT) == {("bob", "sales"): 4, ("carol", "sales"): 2}
    # session.id never becomes a metric label
    for points in telemetry.metrics().values():
        assert all(names.SESSION_ID not in p.attributes for p in points)


def test_nested_contexts_inherit_and_restore():
    with usage_context(user_id="u", department="d", session_id="s", tenant="t1"):
        with usage_context(user_id="v"):
            assert current_attribution() == {"user.id": "v", "department": "d", "session.id": "s", "tenant": "t1"}
        assert current_attribution()["user.id"] == "u"
    assert dict(current_attribution()) == {}


def test_decorator_on_sync_async_and_generator_functions():
    @usage_context(user_id="sync")
    def sync() -> str:
        return current_attribution()["user.id"]

    @usage_context(user_id="async")
    async def coro() -> str:
        await asyncio.sleep(0)
        return current_attribution()["user.id"]

    @usage_context(user_id="gen")
    def gen():
        for _ in range(2):
            received = yield current_attribution().get("user.id")
            assert received == "sent"
        return "done"

    @usage_context(user_id="agen")
    async def agen():
        for _ in range(2):
            yield current_attribution().get("user.id")
            await asyncio.sleep(0)

    assert sync() == "sync"
    assert asyncio.run(coro()) == "async"
    g = gen()
    assert next(g) == "gen"
    assert current_attribution().get("user.id") is None  # the consumer's context is untouched
    assert g.send("sent") == "gen"
    try:
        g.send("sent")
    except StopIteration as stop:
        assert stop.value == "done"

    async def consume():
        seen = [item async for item in agen()]
        return seen, current_attribution().get("user.id")

    assert asyncio.run(consume()) == (["agen", "agen"], None)


def test_thread_pool_tasks_use_the_submitters_attribution(telemetry):
    def who() -> str | None:
        return current_attribution().get("user.id")

    with ThreadPoolExecutor(max_workers=1) as pool:
        with usage_context(user_id="first"):
            assert pool.submit(who).result() == "first"  # the worker thread starts here
        with usage_context(user_id="second"):
            assert pool.submit(who).result() == "second"
        assert pool.submit(who).result() is None


def test_ids_have_one_spelling_whatever_the_source():
    """Look-alikes that are the same id to a person (fullwidth, an invisible character, a decomposed
    accent) are one principal; a Chinese name stays as it is; so do quota overrides, which must match."""
    from otel_tokens.quota.file import parse_quotas

    for spelled, normal in (("\uff41\uff4c\uff49\uff43\uff45", "alice"), ("al\u200bice", "alice"),
                            ("\u00adalice\u2060", "alice"), ("Jose\u0301", "Jos\u00e9"),
                            ("\u5f20\u4e09", "\u5f20\u4e09"),
                            ("\uff3f\uff3fother\uff3f\uff3f", "\\__other__")):  # no one poses as our principals
        with usage_context(user_id=spelled):
            assert current_attribution()[names.USER_ID] == normal, spelled
    quotas = parse_quotas({"users": {"overrides": {"\uff42\uff4f\uff42": {"tokens": 5}}}}, "q.yml")
    assert set(quotas.users.overrides) == {"bob"}
    with pytest.raises(Exception, match="same id as another override once normalized"):
        parse_quotas({"users": {"overrides": {"bob": {"tokens": 5}, "b\u200bob": {"tokens": 9}}}}, "q.yml")
