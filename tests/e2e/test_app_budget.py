"""The app as a quota scope in budget mode: the process's service.name is charged beside its user and
department, on one real Redis shared by several apps; an app's budget refuses that app's calls only."""

from __future__ import annotations

from collections import Counter

import pytest

from otel_tokens import QuotaExceededError, names, quota_status
from otel_tokens.quota.budget.store import RedisBudgetStore
from otel_tokens.quota.vocabulary import APP, USER
from tests.support.budget import REJECT_ALL, budget_app, run_budget_apps, write_quotas
from tests.support.openai_server import OpenAIServer

BIG = {"tokens": 10**6}


def test_an_app_budget_refuses_that_apps_calls_and_quota_status_shows_it(tmp_path, redis_url):
    quotas = write_quotas(tmp_path / "q.yml", {"default": BIG}, apps={
        "default": {"month": BIG}, "overrides": {"kb-chat": {"month": {"tokens": 400}}}}, timezone="Asia/Shanghai")
    for app in budget_app(quotas, redis_url, REJECT_ALL, app="kb-chat"):
        with pytest.raises(QuotaExceededError) as caught:
            for i in range(50):
                app.ask(f"user-{i % 3}")
        refusal = caught.value
        assert (refusal.scope, refusal.principal, refusal.window, refusal.kind) == ("app", "kb-chat", "month", "tokens")
        held = app.held("kb-chat", APP)[0]
        assert held == sum(app.metric_tokens(f"user-{i}") for i in range(3)) <= 400
        assert str(refusal).startswith("app 'kb-chat' would go over the month tokens quota: ")
        assert app.decisions(window=True) == {("reject", "app", "month"): 1}
        # every counter point names the app: what the app rules and the report group by
        apps = {p.attributes.get(names.SERVICE_NAME) for metric in (names.METRIC_LLM_TOKEN_USAGE,
                names.METRIC_QUOTA_TOKENS, names.METRIC_LLM_REQUESTS) for p in app.tel.metrics()[metric]}
        assert apps == {"kb-chat"}
        status = {(w.scope, w.principal, w.window): w for w in quota_status(user_id="user-0").windows}
        month = status["app", "kb-chat", "month"]
        assert (month.used, month.limit, month.kind) == (held, 400, "tokens")
        assert month.resets_at is not None and month.resets_at.utcoffset().total_seconds() == 8 * 3600
        assert month.resets_at.day == 1 and month.resets_at.hour == 0  # the next local month's midnight
        # another app's standing, asked by name (a front end that serves several)
        (other,) = quota_status(user_id="user-0", app="batch-summarize").windows[-1:]
        assert (other.scope, other.principal, other.used, other.limit) == ("app", "batch-summarize", 0, 10**6)


def test_two_apps_on_one_redis_the_budget_of_one_never_refuses_the_other(tmp_path, redis_url):
    """kb-chat (two processes x 3 threads) spends its 1,000-token month while batch-summarize runs beside it for
    the same user: kb-chat is refused by its app budget, batch-summarize never, and the store holds each app's
    and the user's exact usage."""
    quotas = write_quotas(tmp_path / "q.yml", {"default": BIG}, apps={
        "default": {"month": BIG}, "overrides": {"kb-chat": {"month": {"tokens": 1000}}}})
    common = {"OTEL_TOKENS_QUOTA_FILE": str(quotas), "OTEL_TOKENS_BUDGET_STORE": redis_url, "MAX_TOKENS": "32",
              "BUDGET_USER": "alice", "OTHER_USER": "alice", "REFUSALS": "2"}
    chat = {**common, "OTEL_SERVICE_NAME": "kb-chat", "CALLERS": "3", "OTHER_CALLS": "0"}
    batch = {**common, "OTEL_SERVICE_NAME": "batch-summarize", "CALLERS": "0", "OTHER_CALLS": "12"}
    with OpenAIServer() as server:
        results = run_budget_apps(server, [chat, batch, chat])
    by_app: Counter[str] = Counter()
    for result in results:
        by_app.update(result["apps"])
    assert set(by_app) == {"kb-chat", "batch-summarize"}  # each process's points carry its own service.name
    chat_results = [results[0], results[2]]
    assert sum((Counter(r["refused_by"]) for r in chat_results), Counter()) == {"app kb-chat month": 2 * 3 * 2}
    assert results[1]["outcomes"] == {"alice served": 12} and results[1]["refused_by"] == {}
    store = RedisBudgetStore(redis_url)
    chat_tokens, _, chat_flight = store.read(APP, "kb-chat")
    batch_tokens, _, _ = store.read(APP, "batch-summarize")
    assert chat_tokens == by_app["kb-chat"] <= 1000 and chat_flight == 0  # never past the app's budget
    assert chat_tokens > 1000 - 6 * (86 + 32)  # and refused only when a worst case no longer fit
    assert batch_tokens == by_app["batch-summarize"] > 0
    assert store.read(USER, "alice")[0] == chat_tokens + batch_tokens  # the user is charged in both apps
