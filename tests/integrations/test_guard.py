"""The quota guard: state from Alertmanager webhooks, decisions per call, fail open/closed, overhead."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from otel_tokens import QuotaExceededError, TokenUsageInstrumentor, names, usage_context
from otel_tokens.config import load_settings
from otel_tokens.config.settings import AlertSettings, GuardRule, GuardSettings, Settings
from otel_tokens.ops.alert_endpoint import serve
from otel_tokens.quota.alert.mode import AlertMode, AlertState
from tests.support.alerts import alert
from tests.support.openai_server import OpenAIServer
from tests.support.telemetry import Telemetry, make_telemetry


def test_state_follows_firing_and_resolved_alerts():
    state = AlertState()
    state.update({"alerts": [alert("LLMUserTokenQuota", "warning", user_id="alice"),
                             alert("LLMUserTokenQuota", "critical", user_id="alice"),
                             alert("LLMDepartmentTokenBudget", "warning", department="support", window="month"),
                             alert("LLMUsageSpike", "warning", user_id="bob"),  # not a quota alert
                             # a forecast is not a quota reached: the guard never acts on it
                             alert("LLMDepartmentBudgetForecast", "warning", department="research", window="month")]})
    snapshot = state.snapshot()
    assert snapshot["users"]["alice"]["severity"] == "critical"
    assert snapshot["departments"]["support"]["severity"] == "warning"
    assert "bob" not in snapshot["users"] and "research" not in snapshot["departments"]
    state.update({"alerts": [alert("LLMUserTokenQuota", "critical", "resolved", user_id="alice")]})
    assert state.snapshot()["users"]["alice"]["severity"] == "warning"


def test_a_principal_over_two_windows_stays_blocked_until_both_resolve():
    """A department over its month and its year (the same quota kind and severity): the month's alert resolving
    at the month's turn must not lift the year's block, and the poller sees the one still firing."""
    state = AlertState()
    state.update({"alerts": [alert("LLMDepartmentCostBudget", "critical", department="support", window=w, quota="cost")
                             for w in ("month", "year")]})
    state.update({"alerts": [alert("LLMDepartmentCostBudget", "critical", "resolved", department="support",
                                   window="month", quota="cost")]})
    assert state.snapshot()["departments"]["support"]["window"] == "year"
    assert set(state.firing()) == {("department", "support", "cost", "year", "critical")}
    state.update({"alerts": [alert("LLMDepartmentCostBudget", "critical", "resolved", department="support",
                                   window="year", quota="cost")]})
    assert "support" not in state.snapshot()["departments"]


def test_a_users_day_and_month_alerts_at_once_block_by_window():
    """A user over the day's and the month's token quota at once (the rules fire both, window="day" and "month"):
    the day's resolving at local midnight leaves the month's block in place until the month's resolves too."""
    state = AlertState()
    state.update({"alerts": [alert("LLMUserTokenQuota", "critical", user_id="li", window=w) for w in ("day", "month")]})
    assert set(state.firing()) == {("user", "li", "tokens", "day", "critical"), ("user", "li", "tokens", "month",
                                                                                 "critical")}
    state.update({"alerts": [alert("LLMUserTokenQuota", "critical", "resolved", user_id="li", window="day")]})
    assert state.snapshot()["users"]["li"]["window"] == "month"
    state.update({"alerts": [alert("LLMUserTokenQuota", "critical", "resolved", user_id="li", window="month")]})
    assert "li" not in state.snapshot()["users"]


RULES = (GuardRule("user", "reject", "critical"),
         GuardRule("user", "downgrade", "warning", (("gpt-4*", "gpt-3.5-turbo"),)),
         GuardRule("department", "reject", "critical"))


@pytest.fixture
def guard_server():
    server = serve("127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
def test_decisions_per_user_and_department(guard_server):
    state: AlertState = guard_server.state
    url = f"http://127.0.0.1:{guard_server.server_address[1]}/state"
    guard = AlertMode(GuardSettings(AlertSettings(url, 0.05), rules=RULES))
    guard.refresh()
    assert guard.decide("gpt-4o", {names.USER_ID: "alice"}) is None
    state.update({"alerts": [alert("LLMUserTokenQuota", "warning", user_id="alice")]})
    guard.refresh()
    decision = guard.decide("gpt-4o", {names.USER_ID: "alice"})
    assert (decision.action, decision.model) == ("downgrade", "gpt-3.5-turbo")
    assert guard.decide("qwen-max", {names.USER_ID: "alice"}) is None  # no cheaper model named for it
    state.update({"alerts": [alert("LLMUserTokenQuota", "critical", user_id="alice"),
                             alert("LLMDepartmentTokenBudget", "critical", department="sales", window="month")]})
    guard.refresh()
    assert guard.decide("gpt-4o", {names.USER_ID: "alice"}).action == "reject"
    error = guard.decide("gpt-4o", {names.USER_ID: "alice"}).error()
    assert (error.scope, error.principal, error.window, error.usage, error.limit, error.http_status) == (
        "user", "alice", "24h", "1.1k tokens", "1k tokens", 429)
    assert guard.decide("gpt-4o", {names.USER_ID: "bob", names.DEPARTMENT: "sales"}).action == "reject"
    assert guard.decide("gpt-4o", {names.USER_ID: "bob", names.DEPARTMENT: "support"}) is None


def _instrument_with_guard(server) -> tuple[AlertState, TokenUsageInstrumentor, AlertMode, Telemetry]:
    """Instrumented, the guard polling `server`'s state (RULES); the caller uninstruments."""
    url = f"http://127.0.0.1:{server.server_address[1]}/state"
    tel, tracer_provider, meter_provider = make_telemetry()
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            settings=Settings(guard=GuardSettings(AlertSettings(url, 0.05, stale_grace=0),
                                                                  rules=RULES)))
    return server.state, instrumentor, instrumentor.recorder.enforcement.alert, tel
def test_guard_in_calls_reject_downgrade_and_fail_open(guard_server):
    state, instrumentor, guard, tel = _instrument_with_guard(guard_server)
    try:
        with OpenAIServer() as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)

            def ask(user: str) -> None:
                with usage_context(user_id=user, department="support"):
                    client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])

            state.update({"alerts": [alert("LLMUserTokenQuota", "warning", user_id="alice")]})
            guard.refresh()
            ask("alice")
            assert server.last_request.body["model"] == "gpt-3.5-turbo"  # what the server received
            state.update({"alerts": [alert("LLMUserTokenQuota", "critical", user_id="alice")]})
            guard.refresh()
            requests_before = len(server.requests)
            with pytest.raises(QuotaExceededError) as caught:
                ask("alice")
            assert len(server.requests) == requests_before  # refused before any request
            assert caught.value.principal == "alice" and caught.value.window == "24h"
            ask("bob")  # other users are never affected
            guard_server.shutdown()
            guard_server.server_close()
            guard.refresh()
            ask("carol")  # the state source is down: fail open for whoever the last state did not block
            with pytest.raises(QuotaExceededError):
                ask("alice")  # and what it blocked stays blocked (block_hold): an outage unblocks nobody
    finally:
        instrumentor.uninstrument()
    downgraded, rejected, bob, fail_open, held = tel.spans()
    assert held.attributes[names.LLM_QUOTA_ACTION] == "reject" and held.attributes[names.USER_ID] == "alice"
    assert downgraded.attributes[names.LLM_QUOTA_ACTION] == "downgrade"
    assert downgraded.attributes[names.LLM_QUOTA_ORIGINAL_MODEL] == "gpt-4"
    assert downgraded.attributes[names.GEN_AI_REQUEST_MODEL] == "gpt-3.5-turbo"
    assert rejected.attributes[names.LLM_QUOTA_ACTION] == "reject"
    assert rejected.attributes[names.ERROR_TYPE] == "QuotaExceededError"
    assert names.LLM_QUOTA_ACTION not in bob.attributes
    assert fail_open.attributes[names.LLM_QUOTA_ACTION] == "fail_open"
    decisions = {p.attributes["decision"]: p.value for p in tel.metrics()[names.METRIC_GUARD_DECISIONS]}
    assert decisions == {"downgrade": 1, "reject": 2, "fail_open": 1}


@pytest.mark.parametrize("action", ["reject", "fit"])  # alert mode knows no remaining budget: fit refuses
@pytest.mark.parametrize("service", ["kb-chat", "batch-summarize"])
def test_an_apps_budget_alert_refuses_that_apps_calls_only(guard_server, service, action):
    """Alert mode with a rule for the app scope: the app whose LLMAppCostBudget fires (its service_name label) is
    refused, whoever its user is; another app is not, nor is its other scopes' alert read as the app's."""
    url = f"http://127.0.0.1:{guard_server.server_address[1]}/state"
    _, tracer_provider, meter_provider = make_telemetry()
    rules = (GuardRule("app", action, "critical"),)
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, settings=Settings(
        app=service, guard=GuardSettings(AlertSettings(url, 0.05, stale_grace=0), rules=rules)))
    guard = instrumentor.recorder.enforcement.alert
    try:
        guard_server.state.update({"alerts": [
            alert("LLMAppCostBudget", "critical", service_name="kb-chat", window="month", quota="cost"),
            alert("LLMDepartmentCostBudget", "critical", department="batch-summarize", window="month", quota="cost")]})
        guard.refresh()
        with OpenAIServer() as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            with usage_context(user_id="alice", department="support"):
                if service == "kb-chat":
                    with pytest.raises(QuotaExceededError) as caught:
                        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
                    assert (caught.value.scope, caught.value.principal, caught.value.window) == (
                        "app", "kb-chat", "month")
                    assert server.requests == []
                else:
                    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
                    assert len(server.requests) == 1
    finally:
        instrumentor.uninstrument()


def test_a_guard_endpoint_that_sends_no_apps_section_is_still_read():
    """A guard endpoint of the version before the app scope answers users and departments only."""
    guard = AlertMode(GuardSettings(AlertSettings("http://127.0.0.1:9/state", 1.0), rules=RULES))
    guard._apply({"users": {"alice": {"severity": "critical"}}, "departments": {}})
    guard.healthy, guard.last_update = True, time.monotonic()
    assert guard.decide("gpt-4o", {names.USER_ID: "alice"}).action == "reject"


def test_fail_closed_rejects_when_the_state_is_unreachable():
    guard = AlertMode(GuardSettings(AlertSettings("http://127.0.0.1:9/state", 0.05), fail_closed=True, rules=RULES))
    guard.refresh()
    decision = guard.decide("m", {names.USER_ID: "alice"})
    assert decision.action == "fail_closed"


def test_guard_config_is_read_and_checked(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("guard:\n  source: http://guard:9095/state\n  poll_interval: 1\n  rules:\n"
                      "    - {quota: user, action: downgrade, level: warning, downgrade: {'gpt-4o*': gpt-4o-mini}}\n")
    settings = load_settings({"OTEL_TOKENS_CONFIG": str(config)})
    assert settings.errors == ()
    assert settings.guard.rules == (GuardRule("user", "downgrade", "warning", (("gpt-4o*", "gpt-4o-mini"),)),)
    config.write_text("guard:\n  source: http://g/state\n  rules: [{quota: team, action: reject}]\n")
    settings = load_settings({"OTEL_TOKENS_CONFIG": str(config)})
    assert not settings.guard.alert.enabled and "rules[0].quota 'team'" in settings.errors[0]
    # `scope:` is the word (`quota:` above is its old spelling, still read)
    config.write_text("guard:\n  source: http://g/state\n  rules: [{scope: department, action: reject}]\n")
    assert load_settings({"OTEL_TOKENS_CONFIG": str(config)}).guard.rules == (GuardRule("department", "reject"),)
    config.write_text("guard:\n  source: http://g/state\n  rules: [{scope: team, action: reject}]\n")
    assert "rules[0].scope 'team'" in load_settings({"OTEL_TOKENS_CONFIG": str(config)}).errors[0]
    config.write_text("guard:\n  source: http://g/state\n  rules: [{scope: user, quota: department, action: reject}]\n")
    assert "both scope and quota" in load_settings({"OTEL_TOKENS_CONFIG": str(config)}).errors[0]


def test_guard_overhead_for_an_allowed_principal_is_a_dictionary_lookup():
    guard = AlertMode(GuardSettings(AlertSettings("http://unused", 1.0), rules=RULES))
    guard._users = {f"user-{i}": {"severity": "critical"} for i in range(1000)}
    guard.healthy, guard.last_update = True, time.monotonic()  # as after its first refresh
    attribution = {names.USER_ID: "alice", names.DEPARTMENT: "support"}
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        guard.decide("gpt-4o", attribution)
    per_call = (time.perf_counter() - start) / n
    print(f"\nguard decide() for an allowed principal: {per_call * 1e6:.2f} us")
    assert guard.decide("gpt-4o", attribution) is None
def test_transformers_generate_is_refused_for_a_principal_over_quota(guard_server):
    import torch

    from tests.support import tiny_models as tm

    state, instrumentor, guard, tel = _instrument_with_guard(guard_server)
    model = tm.gpt2()
    try:
        state.update({"alerts": [alert("LLMUserTokenQuota", "critical", user_id="alice")]})
        guard.refresh()
        with usage_context(user_id="alice"), pytest.raises(QuotaExceededError) as caught:
            model.generate(torch.tensor([[5, 6]]), max_new_tokens=2, logits_processor=tm.forcing(2, [11, 12]))
        assert caught.value.principal == "alice" and caught.value.http_status == 429
        with usage_context(user_id="bob"):
            out = model.generate(torch.tensor([[5, 6]]), max_new_tokens=2, logits_processor=tm.forcing(2, [11, 12]))
        assert out.shape == (1, 4)
    finally:
        instrumentor.uninstrument()
    refused, served = tel.spans()
    assert refused.attributes[names.LLM_QUOTA_ACTION] == "reject" and refused.attributes[names.USER_ID] == "alice"
    assert names.GEN_AI_USAGE_OUTPUT_TOKENS not in refused.attributes
    assert served.attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS] == 2 and names.LLM_QUOTA_ACTION not in served.attributes
