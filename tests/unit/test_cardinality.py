"""Cardinality guard: per-user labels stay bounded and totals stay right."""

from __future__ import annotations

import logging

from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from otel_tokens import logs as safety
from otel_tokens import names, usage_context
from otel_tokens.config.settings import OTHER_VALUE, Settings
from otel_tokens.ops.doctor import report
from otel_tokens.recording.recorder import Recorder
from tests.support.telemetry import make_telemetry


def test_twenty_thousand_users_with_a_cap_of_one_thousand(caplog, monkeypatch):
    monkeypatch.setattr(safety, "_reported", set())  # the fold warning is once per process
    # a reader whose cardinality limit admits 1001 users x 7 departments x 2 token types
    tel, tracer_provider, meter_provider = make_telemetry(sampler=ALWAYS_OFF, series_limit=10_000)
    recorder = Recorder(tracer_provider.get_tracer("t"), meter_provider.get_meter("t"),
                        Settings(cardinality_limit=1000, series_limit=10_000, builtin_prices=False))
    expected_total = 0
    with caplog.at_level(logging.WARNING, logger="otel_tokens"):
        for i in range(20_000):
            with usage_context(user_id=f"user-{i}", department=f"dept-{i % 7}"):
                handle = recorder.begin(names.OPERATION_CHAT, "openai", "m")
                handle.record.input_tokens, handle.record.output_tokens = i % 13 + 1, i % 5
                handle.record.usage_source = names.SOURCE_REPORTED
                recorder.finish(handle)
            expected_total += i % 13 + 1 + i % 5
    points = tel.metrics()[names.METRIC_LLM_TOKEN_USAGE]
    users = {p.attributes[names.USER_ID] for p in points}
    assert len(users) <= 1001 and OTHER_VALUE in users
    assert {f"user-{i}" for i in range(1000)} <= users  # the first thousand keep their names
    assert sum(p.value for p in points) == expected_total
    assert {p.attributes[names.DEPARTMENT] for p in points} == {f"dept-{i}" for i in range(7)}
    requests = tel.metrics()[names.METRIC_LLM_REQUESTS]
    assert sum(p.value for p in requests) == 20_000
    assert len({p.attributes[names.USER_ID] for p in requests}) <= 1001
    folded = [r for r in caplog.records if OTHER_VALUE in r.getMessage()]
    assert len(folded) == 1 and "user.id" in folded[0].getMessage()
    assert "19000 calls had their user.id folded into '__other__'" in report(recorder=recorder)
    recorder.close()


def test_spans_keep_the_real_value_past_the_cap():
    tel, tracer_provider, meter_provider = make_telemetry()
    recorder = Recorder(tracer_provider.get_tracer("t"), meter_provider.get_meter("t"),
                        Settings(cardinality_limit=1, builtin_prices=False))
    for user in ("first", "second"):
        with usage_context(user_id=user):
            handle = recorder.begin(names.OPERATION_CHAT, "openai", "m")
            handle.record.input_tokens = 1
            recorder.finish(handle)
    assert [s.attributes[names.USER_ID] for s in tel.spans()] == ["first", "second"]
    assert tel.token_totals(names.USER_ID) == {("first",): 1, (OTHER_VALUE,): 1}
    recorder.close()


def test_configured_dimensions_become_the_labels():
    tel, tracer_provider, meter_provider = make_telemetry()
    recorder = Recorder(tracer_provider.get_tracer("t"), meter_provider.get_meter("t"),
                        Settings(metric_dimensions=("tenant",), builtin_prices=False))
    with usage_context(user_id="u", department="d", tenant="acme"):
        handle = recorder.begin(names.OPERATION_CHAT, "openai", "m")
        handle.record.output_tokens = 4
        recorder.finish(handle)
    (point,) = tel.metrics()[names.METRIC_LLM_TOKEN_USAGE]
    assert point.attributes["tenant"] == "acme"
    assert names.USER_ID not in point.attributes and names.DEPARTMENT not in point.attributes
    assert tel.span().attributes[names.USER_ID] == "u"
    recorder.close()


def _calls(users: int, departments: int) -> int:
    import torch

    from tests.support import tiny_models as tm
    from tests.support.tiny_models import forcing

    model = tm.gpt2()
    total = 0
    for i in range(users):
        with usage_context(user_id=f"user-{i}", department=f"dept-{i % departments}"):
            model.generate(torch.tensor([[5, 6]]), max_new_tokens=1, logits_processor=forcing(2, [11]))
        total += 3
    return total


def test_series_limit_follows_the_sdk_reader_and_keeps_departments_right():
    """The SDK keeps a reader's cardinality limit of label sets per metric (2000 by default, 200
    here to keep the test fast) and lumps the rest into one unlabelled overflow series, losing the
    department too; we fold the user first, so departments and totals stay right."""
    from otel_tokens import TokenUsageInstrumentor
    tel, tracer_provider, meter_provider = make_telemetry(sampler=ALWAYS_OFF, series_limit=200)
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            settings=Settings(builtin_prices=False))
    try:
        recorder = instrumentor.recorder
        assert recorder.accounting.series_limit == 200  # read from the reader
        total = _calls(300, 3)
    finally:
        instrumentor.uninstrument()
    points = tel.metrics()[names.METRIC_LLM_TOKEN_USAGE]
    assert all("otel.metric.overflow" not in p.attributes for p in points)
    assert sum(p.value for p in points) == total
    assert len(points) <= 200
    by_department = tel.token_totals(names.DEPARTMENT)
    assert by_department == {(f"dept-{d}",): 100 * 3 for d in range(3)}
    users = {p.attributes[names.USER_ID] for p in points}
    assert OTHER_VALUE in users and len(users) < 100
    assert recorder.accounting.series_folded_calls > 0


def test_sdk_reader_limit_is_detected():
    from otel_tokens.recording.sdk_readers import sdk_series_limit

    _, _, default_provider = make_telemetry()
    _, _, raised_provider = make_telemetry(series_limit=50_000)
    assert sdk_series_limit(default_provider) == 2000
    assert sdk_series_limit(raised_provider) == 50_000
    assert sdk_series_limit(object()) == 2000


def test_one_setting_admits_more_principals_per_process_than_the_sdk_default(monkeypatch, tmp_path):
    """Under opentelemetry-instrument the SDK reader keeps 2000 label sets per metric and no variable changes
    that: OTEL_TOKENS_SERIES_LIMIT raises it for our counters, and the per-dimension cap follows, so 2,500 users
    in one process keep their own llm.quota.* series (nothing folds, nothing overflows); doctor names the limit
    and warns when the quota file names more users than it admits."""
    from otel_tokens import TokenUsageInstrumentor
    from otel_tokens.config import load_settings

    tel, tracer_provider, meter_provider = make_telemetry(sampler=ALWAYS_OFF)  # the SDK default: 2000
    settings = load_settings({"OTEL_TOKENS_SERIES_LIMIT": "3000", "OTEL_TOKENS_BUILTIN_PRICES": "false"})
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, settings=settings)
    try:
        recorder = instrumentor.recorder
        for i in range(2500):
            with usage_context(user_id=f"user-{i}", department=f"dept-{i % 7}"):
                handle = recorder.begin(names.OPERATION_CHAT, "openai", "m")
                handle.record.input_tokens, handle.record.output_tokens = 3, 1
                handle.record.usage_source = names.SOURCE_REPORTED
                recorder.finish(handle)
        points = tel.metrics()[names.METRIC_QUOTA_TOKENS]
        assert {p.attributes[names.USER_ID] for p in points} == {f"user-{i}" for i in range(2500)}
        assert all(p.value == 4 for p in points) and len(points) == 2500
        assert recorder.accounting.principals.folded_calls == 0
        assert "3000 label sets per metric" in report(recorder=recorder)
        quota_file = tmp_path / "quotas.yaml"
        quota_file.write_text("users:\n  default: {tokens: 100}\n  overrides:\n"
                              + "".join(f"    named-{i}: {{tokens: 5}}\n" for i in range(2900)))
        monkeypatch.setenv("OTEL_TOKENS_QUOTA_FILE", str(quota_file))
        assert "names 2900 users and the series limit is 3000" in report(recorder=recorder)
    finally:
        instrumentor.uninstrument()
