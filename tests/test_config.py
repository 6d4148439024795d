"""Configuration: file plus environment; every bad value named (file, field, value); calls keep working."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

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
        "USD", 5000, ("user.id", "department"))


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
    messages = [r.getMessage() for r in caplog.records if "price file" in r.getMessage()]
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
    assert any(str(directory) in r.getMessage() and "cannot be read" in r.getMessage() for r in caplog.records)


def test_bad_environment_value_is_named(caplog):
    with caplog.at_level(logging.WARNING, logger="otel_tokens"):
        settings = load_settings({"OTEL_TOKENS_CARDINALITY_LIMIT": "-3"})
    assert settings.cardinality_limit == 5000
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
    assert str(config) in text and "cardinality_limit: 0 is not a positive integer" in text
    assert Path(config).exists()
