"""`fit` in budget mode, against a real redis-server and a local OpenAI-compatible server that generates every token
it is allowed (`generate_as_asked`): a call whose worst case would cross the limit but whose input fits is sent
with its output limit lowered to what remains, in the caller's own parameter; it cannot overshoot, at any
concurrency; below the smallest fit it is refused as before."""

from __future__ import annotations

import asyncio
import threading

import openai
import pytest

from otel_tokens import QuotaExceededError, names, usage_context
from otel_tokens.config.settings import GuardRule
from tests.support.budget import budget_app, write_quotas

FIT = (GuardRule("user", "fit"),)
GREEDY = {"generate_as_asked": 4096}  # the server generates the whole output limit it reads


def test_a_call_that_would_cross_is_fitted_to_what_remains_and_the_next_refused(tmp_path, redis_url):
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 1000}})
    for app in budget_app(quotas, redis_url, rules=FIT, server=GREEDY):
        first = app.ask("ann", max_tokens=500)
        assert first.usage.completion_tokens == 500
        used, _, _ = app.held("ann")
        second = app.ask("ann", max_tokens=500)  # 500 more would cross 1,000: fitted to what remains
        sent = app.server.requests[-1].body["max_tokens"]
        assert sent < 500 and second.usage.completion_tokens == sent
        assert used + second.usage.total_tokens <= 1000  # never over, with the input's bound counted
        assert 1000 - used - sent == 86  # the input bound of this request (budget/bounds.py), nothing else
        span = app.tel.spans()[-1]
        assert span.attributes[names.LLM_QUOTA_ACTION] == "fit"
        assert app.decisions(window=True) == {("fit", "user", "24h"): 1}
        with pytest.raises(QuotaExceededError):  # under 16 tokens left: refused as without fit
            app.ask("ann", max_tokens=500)
        assert app.held("ann")[0] <= 1000
        app.ask("bob", max_tokens=500)  # others untouched
        assert app.server.requests[-1].body["max_tokens"] == 500


def test_the_callers_own_parameter_is_the_one_lowered_and_a_call_without_one_gets_max_tokens(tmp_path, redis_url):
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 600}})
    for app in budget_app(quotas, redis_url, rules=FIT, server=GREEDY):
        app.ask("cy", max_tokens=None, max_completion_tokens=400)  # a reasoning model's parameter
        body = app.server.requests[-1].body
        assert body["max_completion_tokens"] == 400 and "max_tokens" not in body
        app.ask("cy", max_tokens=None, max_completion_tokens=400)
        body = app.server.requests[-1].body
        assert body["max_completion_tokens"] < 400 and "max_tokens" not in body
    for app in budget_app(quotas, redis_url, rules=FIT, server=GREEDY):
        app.ask("di", max_tokens=None)  # no limit sent: reserved at the default 4,096, fitted to the 600
        body = app.server.requests[-1].body
        assert 0 < body["max_tokens"] < 600
        assert app.held("di")[0] <= 600
    for app in budget_app(quotas, redis_url, rules=FIT, server=GREEDY):
        app.ask("ed", max_tokens=100, extra_body={"max_tokens": 900})  # the body override is what the server reads
        assert 0 < app.server.requests[-1].body["max_tokens"] < 600


def _ask_six_times(app, outcomes: list[str]) -> None:
    for _ in range(6):
        try:
            app.ask("fay", max_tokens=400)
            outcomes.append("served")
        except QuotaExceededError:
            outcomes.append("refused")


def test_concurrent_calls_are_fitted_and_never_cross(tmp_path, redis_url):
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 3000}})
    for app in budget_app(quotas, redis_url, rules=FIT, server=GREEDY):
        outcomes: list[str] = []
        threads = [threading.Thread(target=_ask_six_times, args=(app, outcomes)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        generated = sum(r.body.get("max_tokens", 0) for r in app.server.requests)
        tokens, _, in_flight = app.held("fay")
        assert in_flight == 0 and tokens <= 3000 and app.metric_tokens("fay") == tokens
        assert generated <= 3000
        fitted = app.decisions().get(("fit", "user"), 0)
        assert fitted >= 1 and outcomes.count("served") >= 7  # 7 x 400 fit whole; the rest fitted or refused
        assert tokens > 3000 - 400  # little left unused: the last calls were shortened, not refused


def test_streams_and_async_calls_are_fitted_too(tmp_path, redis_url):
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 800}})
    for app in budget_app(quotas, redis_url, rules=FIT, server=GREEDY):
        app.ask("gil", max_tokens=500)
        stream = app.ask("gil", max_tokens=500, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text and app.server.requests[-1].body["max_tokens"] < 500
        assert app.held("gil")[0] <= 800

        async def ask_async(server=app.server) -> int:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            with usage_context(user_id="hal", department="sales"):
                await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=500)
                await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=500)
            return server.requests[-1].body["max_tokens"]

        assert asyncio.run(ask_async()) < 500
        assert app.held("hal")[0] <= 800


def test_a_transformers_generate_is_fitted_with_max_new_tokens(tmp_path, redis_url):
    import torch

    from otel_tokens import TokenUsageInstrumentor
    from otel_tokens.config.settings import BudgetSettings, GuardSettings, Settings
    from otel_tokens.quota.vocabulary import USER
    from tests.support.telemetry import make_telemetry
    from tests.support.tiny_models import forcing, gpt2

    quotas = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 100}})
    _, tracer_provider, meter_provider = make_telemetry()
    budget = BudgetSettings(quota_file=quotas, store=redis_url, quota_reload_interval=0.05)
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            settings=Settings(guard=GuardSettings(budget=budget, rules=FIT)))
    try:
        model, prompt = gpt2(), torch.tensor([[5, 6]])
        with usage_context(user_id="ida"):
            first = model.generate(prompt, max_new_tokens=60, logits_processor=forcing(2, []), do_sample=False)
            second = model.generate(prompt, max_new_tokens=60, logits_processor=forcing(2, []), do_sample=False)
        assert first.shape[1] - 2 == 60
        fitted = second.shape[1] - 2
        assert fitted == 100 - 62 - 2  # what remained, less the second call's exact input
        mode = instrumentor.recorder.enforcement.budget
        mode.flush()
        assert mode.store.read(USER, "ida")[0] == 100
    finally:
        instrumentor.uninstrument()


def test_a_litellm_call_is_fitted_too(tmp_path, redis_url):
    import litellm

    quotas = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 800}})
    for app in budget_app(quotas, redis_url, rules=FIT, server=GREEDY):
        ask = {"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}],
               "api_base": app.server.base_url, "api_key": "x", "max_tokens": 500}
        with usage_context(user_id="jo", department="sales"):
            litellm.completion(**ask)
            reply = litellm.completion(**ask)
        sent = app.server.requests[-1].body["max_tokens"]
        assert sent < 500 and reply.usage.completion_tokens == sent
        assert app.held("jo")[0] <= 800


def test_a_cost_limit_is_fitted_through_the_models_output_price(tmp_path, redis_url):
    # gpt-4o at 2.5 / 10 USD per million input / output tokens (tests/support/budget.py): 0.01 USD is 1,000 output
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"cost": 0.01}})
    for app in budget_app(quotas, redis_url, rules=FIT, server=GREEDY):
        app.ask("kim", max_tokens=600)
        app.ask("kim", max_tokens=600)
        sent = app.server.requests[-1].body["max_tokens"]
        assert 300 < sent < 600
        assert app.held("kim")[1] <= 0.01
        assert app.decisions(window=True) == {("fit", "user", "24h"): 1}


def test_without_rules_budget_mode_fits_by_default(tmp_path, redis_url):
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 1000}})
    for app in budget_app(quotas, redis_url, server=GREEDY):
        app.ask("lee", max_tokens=500)
        app.ask("lee", max_tokens=500)
        assert app.server.requests[-1].body["max_tokens"] < 500
        assert app.decisions() == {("fit", "user"): 1}
        with pytest.raises(QuotaExceededError):
            app.ask("lee", max_tokens=500)


@pytest.fixture(scope="module")
def local_tokenizer(tmp_path_factory):
    from tests.support.local_tokenizer import build_local_tokenizer

    return str(build_local_tokenizer(tmp_path_factory.mktemp("local-tokenizer")))


SYSTEM = "You answer from the knowledge base. Cite the document and the section you used, and keep it short."


@pytest.mark.parametrize("exact", [True, False])
def test_near_the_limit_a_chat_prompt_is_counted_with_the_models_own_tokenizer(tmp_path, redis_url, local_tokenizer,
                                                                               exact):
    """A self-hosted model with its HuggingFace tokenizer configured: the call that would cross is fitted to what
    remains after the prompt's exact tokens (the server's own count), not after its byte bound, so the user
    ends at the limit instead of refused with room left; `exact_input: false` keeps the byte bound."""
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 640}})  # 4 calls of 132, then 112 left
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where is the refund policy?"}]
    for app in budget_app(quotas, redis_url, rules=FIT, server={**GREEDY, "tokenizer_dir": local_tokenizer},
                          tokenizers={"local-*": local_tokenizer}, exact_input=exact):
        prompt = app.server.prompt_tokens("local-qwen", messages)
        assert prompt == 84  # this tokenizer's count: the numbers below follow from it
        byte_bound = 64 + sum(16 + len(m["content"].encode()) + len(m["role"]) for m in messages)
        assert byte_bound > prompt + 100
        fitted = []
        with usage_context(user_id="ann", department="sales"):
            for _ in range(40):
                left = 640 - app.held("ann")[0]
                try:
                    app.client.chat.completions.create(model="local-qwen", messages=messages, max_tokens=48)
                except QuotaExceededError:
                    break
                sent = app.server.requests[-1].body["max_tokens"]
                if sent < 48:
                    fitted.append((left, sent))
        used = app.held("ann")[0]
        assert used <= 640  # never over
        if exact:  # shortened to what remains after the prompt as the server counts it: the quota is spent
            assert [sent for _, sent in fitted] == [fitted[0][0] - prompt] and used == 640
        else:  # the byte bound left room for a whole call (its prompt and 48 tokens) unused
            assert 640 - used > prompt + 48


def test_a_fitted_call_past_the_downgrade_level_is_downgraded_and_reserved(tmp_path, redis_url):
    """Fitting lowers the worst case under the refusal level but above a downgrade rule's: the store answers
    `downgrade` (nothing reserved), so the call is sent to the cheaper model and reserved there, fitted."""
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 1000}}, warning_ratio=0.5)
    rules = (GuardRule("user", "downgrade", "warning", (("gpt-4o", "gpt-4o-mini"),)), GuardRule("user", "fit"))
    for app in budget_app(quotas, redis_url, rules=rules, server=GREEDY):
        app.ask("max", max_tokens=400)  # 86 + 400 within the warning's 500
        used = app.held("max")[0]
        app.ask("max", max_tokens=700)  # would cross 1,000: fitted, and then past 500: downgraded
        body = app.server.requests[-1].body
        assert body["model"] == "gpt-4o-mini" and body["max_tokens"] == 1000 - used - 86
        assert app.held("max")[0] <= 1000
        span = app.tel.spans()[-1].attributes
        assert span[names.LLM_QUOTA_ACTION] == "fit" and span[names.LLM_QUOTA_ORIGINAL_MODEL] == "gpt-4o"
