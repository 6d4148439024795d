"""The recorder's call lifecycle on its own: begin / active / finish, what ends up on the span and in
the metrics, once, whatever order the integration's result is consumed in."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from otel_tokens import names, usage_context
from otel_tokens.config.settings import OTHER_VALUE, Settings
from otel_tokens.pricing import PriceBook
from otel_tokens.recording.recorder import Recorder
from tests.support.telemetry import make_telemetry


@pytest.fixture
def recorded():
    tel, tracer_provider, meter_provider = make_telemetry()
    recorder = Recorder(tracer_provider.get_tracer("t"), meter_provider.get_meter("t"),
                        Settings(cardinality_limit=2, builtin_prices=True))
    yield recorder, tel
    recorder.close()


def test_begin_names_the_span_and_attributes_it_to_the_context(recorded):
    recorder, tel = recorded
    with usage_context(user_id="alice", department="support", session_id="s-1", tenant="acme"):
        call = recorder.begin(names.OPERATION_CHAT, "openai", "gpt-4o-mini", server_address="api.example",
                              server_port=443, streaming=True)
    assert call.model == "gpt-4o-mini" and call.record.streaming
    call.record.input_tokens, call.record.output_tokens = 1000, 500
    call.record.usage_source = names.SOURCE_REPORTED
    recorder.finish(call)
    span = tel.span()
    assert span.name == "chat gpt-4o-mini" and span.kind is SpanKind.CLIENT
    expected_cost = PriceBook(Settings()).cost("openai", "gpt-4o-mini", 1000, 500, None).total
    assert dict(span.attributes) == {
        names.GEN_AI_OPERATION_NAME: "chat", names.GEN_AI_PROVIDER_NAME: "openai",
        names.GEN_AI_REQUEST_MODEL: "gpt-4o-mini", names.SERVER_ADDRESS: "api.example", names.SERVER_PORT: 443,
        names.USER_ID: "alice", names.DEPARTMENT: "support", names.SESSION_ID: "s-1", "tenant": "acme",
        names.GEN_AI_USAGE_INPUT_TOKENS: 1000, names.GEN_AI_USAGE_OUTPUT_TOKENS: 500,
        names.LLM_USAGE_SOURCE: "reported", names.LLM_COST: expected_cost, names.LLM_COST_CURRENCY: "USD"}
    assert expected_cost > 0
    assert tel.token_totals(names.USER_ID, names.DEPARTMENT, names.GEN_AI_TOKEN_TYPE) == {
        ("alice", "support", "input"): 1000, ("alice", "support", "output"): 500}
    (request,) = tel.metrics()[names.METRIC_LLM_REQUESTS]
    assert names.SESSION_ID not in request.attributes and request.value == 1


def test_attribution_is_taken_at_begin_not_when_the_call_finishes(recorded):
    recorder, tel = recorded
    with usage_context(user_id="alice"):
        call = recorder.begin(names.OPERATION_CHAT, "openai", "m")
    with usage_context(user_id="mallory"):
        call.record.output_tokens = 3
        recorder.finish(call)
    assert tel.token_totals(names.USER_ID) == {("alice",): 3}


def test_active_makes_the_span_current_and_finishes_only_on_an_exception(recorded):
    recorder, tel = recorded
    call = recorder.begin(names.OPERATION_TEXT_COMPLETION, "transformers", "tiny", SpanKind.INTERNAL)
    outside = trace.get_current_span()
    with call:
        assert trace.get_current_span() is call.span
    assert trace.get_current_span() is outside
    assert tel.spans() == []  # a normal exit leaves the call open: a stream finishes when it is consumed
    with pytest.raises(KeyError, match="boom"), call:
        raise KeyError("boom")
    assert trace.get_current_span() is outside
    span = tel.span()
    assert span.attributes[names.ERROR_TYPE] == "KeyError"
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "KeyError"  # no message


def test_finish_records_once_however_often_it_is_called(recorded):
    recorder, tel = recorded
    call = recorder.begin(names.OPERATION_CHAT, "openai", "m")
    call.record.input_tokens = 7
    for _ in range(3):
        recorder.finish(call)
    recorder.finish(call, error=RuntimeError("late"))
    assert len(tel.spans()) == 1 and tel.token_totals() == {(): 7}
    assert sum(p.value for p in tel.metrics()[names.METRIC_LLM_REQUESTS]) == 1
    assert names.ERROR_TYPE not in tel.span().attributes


def test_a_call_with_no_count_is_a_request_without_tokens_or_cost(recorded):
    recorder, tel = recorded
    recorder.finish(recorder.begin(names.OPERATION_CHAT, "openai", "gpt-4o-mini"))
    assert names.METRIC_LLM_TOKEN_USAGE not in tel.metrics() or tel.token_totals() == {}
    assert names.LLM_COST not in tel.span().attributes
    assert sum(p.value for p in tel.metrics()[names.METRIC_LLM_REQUESTS]) == 1


def test_content_reaches_the_span_only_when_the_integration_captured_it(recorded):
    recorder, tel = recorded
    call = recorder.begin(names.OPERATION_CHAT, "openai", "m")
    recorder.finish(call)
    assert not set(names.CONTENT_ATTRIBUTES) & set(tel.span().attributes)
    tel.spans_exporter.clear()
    call = recorder.begin(names.OPERATION_CHAT, "openai", "m")
    call.record.input_messages = [{"role": "user", "parts": [{"type": "text", "content": "héllo"}]}]
    recorder.finish(call)
    assert tel.span().attributes[names.GEN_AI_INPUT_MESSAGES] == (
        '[{"role": "user", "parts": [{"type": "text", "content": "héllo"}]}]')


def test_stats_say_what_was_called_estimated_folded_and_unpriced(recorded):
    recorder, _ = recorded
    for user, model, source in (("a", "gpt-4o-mini", "reported"), ("b", "gpt-4o-mini", "estimated"),
                                ("c", "mystery-x", "counted")):
        with usage_context(user_id=user):
            call = recorder.begin(names.OPERATION_CHAT, "openai", model)
        call.record.input_tokens, call.record.usage_source = 5, source
        recorder.finish(call)
    stats = recorder.stats()
    assert stats.models == (("openai", "gpt-4o-mini"), ("openai", "mystery-x"))
    assert stats.calls_by_source == {"reported": 1, "estimated": 1, "counted": 1}
    assert stats.folded == {names.USER_ID: 1, names.DEPARTMENT: 0} and stats.cardinality_limit == 2
    assert stats.unpriced == (("openai", "mystery-x"),)
    assert OTHER_VALUE == "__other__"
