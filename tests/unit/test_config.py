"""Configuration: file plus environment; every bad value named (file, field, value); calls keep working."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch
import yaml

from otel_tokens import TokenUsageInstrumentor, names
from otel_tokens.config import load_settings
from tests.support import tiny_models as tm
from tests.support.telemetry import make_telemetry
from tests.support.tiny_models import forcing


def test_file_values_and_environment_overrides(tmp_path):
    config = tmp_path / "otel-tokens.yaml"
    config.write_text("currency: cny\nexchange_rates: {USD: 7.1}\nprice_file: prices/mine.yaml\n"
                      "metric_dimensions: [user.id, department, tenant]\ncardinality_limit: 100\n")
    settings = load_settings({"OTEL_TOKENS_CONFIG": str(config), "OTEL_TOKENS_CARDINALITY_LIMIT": "250"})
    assert settings.errors == ()
    assert settings.currency == "CNY" and settings.exchange_rates == {"USD": 7.1}
    assert settings.price_file == tmp_path / "prices" / "mine.yaml"  # relative to the config file
    assert settings.metric_dimensions == ("user.id", "department", "tenant")
    assert settings.cardinality_limit == 250  # the variable wins


def test_defaults_without_configuration():
    settings = load_settings({})
    assert (settings.currency, settings.cardinality_limit, settings.metric_dimensions) == (
        "USD", None, ("user.id", "department"))  # None: the series limit


BAD_CONFIGS = [
    # (file text, field named, value named)
    ("cardinality_limit: lots\n", "cardinality_limit", "'lots'"),
    ("currency: dollars\n", "currency", "'dollars'"),
    ("metric_dimension: [user.id]\n", "metric_dimension", "['user.id']"),  # unknown field (typo)
    ("metric_dimensions: [user.id, session.id]\n", "metric_dimensions", "['user.id', 'session.id']"),
    ("exchange_rates: {CNY: -1}\n", "exchange_rates", "{'CNY': -1}"),
]


@pytest.mark.parametrize(("text", "field", "value"), BAD_CONFIGS)
def test_bad_config_value_gives_one_clear_message_and_calls_keep_working(tmp_path, caplog, text, field, value):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with caplog.at_level(logging.WARNING, logger="otel_tokens"):
        settings = load_settings({"OTEL_TOKENS_CONFIG": str(config)})
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages
    assert str(config) in messages[0] and field in messages[0] and value in messages[0], messages[0]
    assert settings.errors == tuple(messages)
    _calls_keep_working(settings)


BAD_PRICE_FILES = [
    ("models:\n  - {match: 'm*', currency: USD, input: 'cheap', output: 1}\n", "models[0].input", "'cheap'"),
    ("models:\n  - {match: 'm*', currency: USD, input: -2, output: 1}\n", "models[0].input", "-2"),
    ("models:\n  - {match: 'm[*', currency: USD, input: 1, output: 1}\n", "models[0].match", "'m[*'"),
    ("models:\n  - {match: 'm*', currency: USD, input: 1, output: 1, discount: 5}\n", "models[0].discount", "5"),
    ("models:\n  - {match: 'm*', currency: USD, input: 1}\n", "models[0].output", "None"),
    ("models: {match: 'm*'}\n", "models", "{'match': 'm*'}"),
    ("models: [ {match: 'm*'\n", "line", ""),
]


@pytest.mark.parametrize(("text", "field", "value"), BAD_PRICE_FILES)
def test_bad_price_file_gives_one_clear_message_and_calls_keep_working(tmp_path, caplog, text, field, value):
    price_file = tmp_path / "prices.yaml"
    price_file.write_text("version: 1\n" + text)
    settings = load_settings({"OTEL_TOKENS_PRICE_FILE": str(price_file), "OTEL_TOKENS_BUILTIN_PRICES": "false"})
    with caplog.at_level(logging.WARNING, logger="otel_tokens"):
        _calls_keep_working(settings)
    # about this file (not the "no price for model ... add it to the price file" a first unpriced call logs once)
    messages = [r.getMessage() for r in caplog.records if f"price file {price_file}" in r.getMessage()]
    assert len(messages) == 1, messages
    assert str(price_file) in messages[0] and field in messages[0] and value in messages[0], messages[0]


def test_unreadable_files_are_named(tmp_path, caplog):
    missing = tmp_path / "nowhere.yaml"
    with caplog.at_level(logging.WARNING, logger="otel_tokens"):
        settings = load_settings({"OTEL_TOKENS_CONFIG": str(missing)})
    assert len(settings.errors) == 1 and str(missing) in settings.errors[0] and "cannot be read" in settings.errors[0]
    directory = tmp_path / "a-directory"
    directory.mkdir()
    settings = load_settings({"OTEL_TOKENS_PRICE_FILE": str(directory)})
    with caplog.at_level(logging.WARNING, logger="otel_tokens"):
        _calls_keep_working(settings)
    assert any(str(directory) in r.getMessage() and "is not a regular file" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_device_named_as_a_file_never_hangs_start_up(device, caplog):
    started = time.monotonic()
    settings = load_settings({"OTEL_TOKENS_PRICE_FILE": device, "OTEL_TOKENS_CONFIG": device})
    with caplog.at_level(logging.WARNING, logger="otel_tokens"):
        _calls_keep_working(settings)
    assert time.monotonic() - started < 5
    assert any(device in e and "is not a regular file" in e for e in settings.errors)
    assert any(device in r.getMessage() and "is not a regular file" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("raw", "near"), [("user,dept", "user.id"), ("user_id,department", "user.id"),
                                           ("user.id,dept", "department"), ("user.id,departmnt", "department")])
def test_near_misses_of_the_attribution_keys_are_named(raw, near, caplog):
    with caplog.at_level(logging.WARNING, logger="otel_tokens"):
        settings = load_settings({"OTEL_TOKENS_METRIC_DIMENSIONS": raw})
    assert settings.metric_dimensions == tuple(raw.split(","))  # custom keys stay legitimate
    assert any(f"did you mean {near!r}" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("variable", "raw"), [
    ("OTEL_TOKENS_METRIC_DIMENSIONS", "user.id,,;DROP"), ("OTEL_TOKENS_PRICE_RELOAD_INTERVAL", "nan"),
    ("OTEL_TOKENS_PRICE_RELOAD_INTERVAL", "inf"), ("OTEL_TOKENS_CARDINALITY_LIMIT", "10000000000"),
    ("OTEL_TOKENS_CARDINALITY_LIMIT", "\u0661")])
def test_out_of_range_and_odd_values_are_refused_by_name(variable, raw):
    settings = load_settings({variable: raw})
    assert len(settings.errors) == 1 and variable in settings.errors[0] and repr(raw) in settings.errors[0]


def test_a_guard_poll_interval_out_of_range_is_refused_by_name(tmp_path):
    for value in (".nan", ".inf", "0.000001", "-1"):
        config = tmp_path / "c.yaml"
        config.write_text(f"guard:\n  source: http://guard:9095/state\n  poll_interval: {value}\n")
        settings = load_settings({"OTEL_TOKENS_CONFIG": str(config)})
        assert "poll_interval" in settings.errors[0] and "between 0.05 and 3600" in settings.errors[0], value


def test_bad_environment_value_is_named(caplog):
    with caplog.at_level(logging.WARNING, logger="otel_tokens"):
        settings = load_settings({"OTEL_TOKENS_CARDINALITY_LIMIT": "-3"})
    assert settings.cardinality_limit is None  # the default: the series limit
    (message,) = [r.getMessage() for r in caplog.records]
    assert "OTEL_TOKENS_CARDINALITY_LIMIT" in message and "'-3'" in message


def test_instrumentor_reads_the_config_file_from_the_environment(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("prices:\n  - {match: '*', provider: transformers, currency: USD, input: 1, output: 1}\n")
    monkeypatch.setenv("OTEL_TOKENS_CONFIG", str(config))
    (span,) = _calls_keep_working(None)
    assert span.attributes[names.LLM_COST] == pytest.approx(3e-6)


def _calls_keep_working(settings):
    tel, tracer_provider, meter_provider = make_telemetry()
    instrumentor = TokenUsageInstrumentor()
    kwargs = {} if settings is None else {"settings": settings}
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, **kwargs)
    try:
        out = tm.gpt2().generate(torch.tensor([[5, 6]]), max_new_tokens=1, logits_processor=forcing(2, [11]))
    finally:
        instrumentor.uninstrument()
    assert out.tolist() == [[5, 6, 11]]
    assert tel.token_totals(names.GEN_AI_TOKEN_TYPE) == {("input",): 2, ("output",): 1}
    return tel.spans()


def test_config_path_shown_by_doctor(tmp_path):
    from otel_tokens.ops.doctor import report

    config = tmp_path / "c.yaml"
    config.write_text("cardinality_limit: 0\n")
    text = report(settings=load_settings({"OTEL_TOKENS_CONFIG": str(config)}))
    assert str(config) in text and "cardinality_limit: 0 is not an integer between 1 and 10,000,000" in text
    assert Path(config).exists()


@pytest.mark.parametrize("alert_mode", [True, False])
def test_a_bad_guard_field_refuses_the_section_but_keeps_fail_closed(tmp_path, alert_mode):
    """A `nan` poll interval turned the whole section off, `fail_closed: true` included: an open door."""
    from otel_tokens.quota.alert.mode import AlertMode

    section = {"poll_interval": "nan", "fail_closed": True}
    if alert_mode:
        section["source"] = "http://prometheus:9090/api/v1/alerts"
    else:
        section["enabled"] = False  # alert mode off: budget mode only
    config = tmp_path / "otel-tokens.yaml"
    config.write_text(yaml.safe_dump({"guard": section}))
    env = {"OTEL_TOKENS_CONFIG": str(config), "OTEL_TOKENS_QUOTA_FILE": str(tmp_path / "q.yml"),
           "OTEL_TOKENS_BUDGET_STORE": "redis://127.0.0.1:9/0"}  # budget mode from the environment
    settings = load_settings(env)
    (error,) = [e for e in settings.errors if ": guard: " in e]
    assert f"config {config}: guard:" in error and "poll_interval 'nan'" in error and "fail_closed holds" in error
    guard = settings.guard
    assert guard.fail_closed and guard.budget.enabled and guard.alert.enabled is alert_mode
    if alert_mode:  # every call is refused until the file is fixed, with a message that says why
        decision = AlertMode(guard).decide("gpt-4o", {names.USER_ID: "alice"})
        assert decision.action == "fail_closed" and "guard section of config" in str(decision.error())
    section["fail_closed"] = False
    config.write_text(yaml.safe_dump({"guard": section}))
    settings = load_settings(env)
    assert not settings.guard.fail_closed and not settings.guard.alert.enabled  # off, as before, when it did not ask
