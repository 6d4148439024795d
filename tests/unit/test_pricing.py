"""Cost: exact against the price table, user prices, virtual prices, conversion, reload, unpriced."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from otel_tokens import TokenUsageInstrumentor, names, usage_context
from otel_tokens.config.settings import Settings
from otel_tokens.ops.doctor import report
from otel_tokens.pricing import PriceBook
from otel_tokens.recording.recorder import Recorder
from tests.support import tiny_models as tm
from tests.support.telemetry import Telemetry, make_telemetry
from tests.support.tiny_models import forcing

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def priced(tmp_path):
    """A recorder on in-memory providers with the settings a test gives."""
    made = []

    def make(**settings_fields) -> tuple[Recorder, Telemetry]:
        tel, tracer_provider, meter_provider = make_telemetry()
        recorder = Recorder(tracer_provider.get_tracer("t"), meter_provider.get_meter("t"), Settings(**settings_fields))
        made.append(recorder)
        return recorder, tel

    yield make
    for recorder in made:
        recorder.close()


def call(recorder: Recorder, model: str, input_tokens: int, output_tokens: int, cached: int | None = None,
         provider: str = "openai", source: str = names.SOURCE_REPORTED, response_model: str | None = None) -> None:
    handle = recorder.begin(names.OPERATION_CHAT, provider, model)
    record = handle.record
    record.input_tokens, record.output_tokens, record.cache_read_input_tokens = input_tokens, output_tokens, cached
    record.usage_source, record.response_model = source, response_model or model
    recorder.finish(handle)


def cost_totals(tel: Telemetry, *keys: str) -> dict[tuple, float]:
    out: dict[tuple, float] = {}
    for point in tel.metrics().get(names.METRIC_LLM_COST, []):
        key = tuple(point.attributes.get(k) for k in keys)
        out[key] = out.get(key, 0.0) + point.value
    return out


def test_reported_and_cached_tokens_cost_exactly_the_user_price(priced):
    entry = {"match": "acme-large*", "currency": "USD", "input": 3, "output": 15, "cached_input": 0.3}
    recorder, tel = priced(prices=(entry,))
    with usage_context(user_id="alice", department="support"):
        call(recorder, "acme-large", 1000, 500, cached=400, response_model="acme-large-2025-01-01")
        call(recorder, "acme-large", 2000, 100)
    first, second = tel.spans()
    assert first.attributes[names.LLM_COST] == pytest.approx((600 * 3 + 400 * 0.3 + 500 * 15) / 1e6, rel=1e-12)
    assert first.attributes[names.LLM_COST_CURRENCY] == "USD"
    assert second.attributes[names.LLM_COST] == pytest.approx((2000 * 3 + 100 * 15) / 1e6, rel=1e-12)
    totals = cost_totals(tel, names.USER_ID, names.GEN_AI_TOKEN_TYPE, names.CURRENCY)
    assert totals[("alice", "input", "USD")] == pytest.approx((600 * 3 + 400 * 0.3 + 2000 * 3) / 1e6, rel=1e-12)
    assert totals[("alice", "output", "USD")] == pytest.approx((500 * 15 + 100 * 15) / 1e6, rel=1e-12)
    assert sum(totals.values()) == pytest.approx(first.attributes[names.LLM_COST] + second.attributes[names.LLM_COST])


def test_builtin_table_prices_every_entry_exactly(priced):
    table = yaml.safe_load((ROOT / "otel_tokens" / "data" / "prices.yaml").read_text())
    recorder, tel = priced(exchange_rates={"CNY": 0.5, "EUR": 1.25, "GBP": 1.5, "JPY": 0.01})
    rates = {"USD": 1.0, "CNY": 0.5, "EUR": 1.25, "GBP": 1.5, "JPY": 0.01}
    checked = 0
    for entry in table["models"]:
        model = entry["match"].replace("*", "-2025-01-01")
        price = recorder.prices.lookup(entry.get("provider") or "openai", model)
        if price is None or price.match != entry["match"]:
            continue  # shadowed by an earlier, more specific entry (a test below checks the order)
        tel.spans_exporter.clear()
        call(recorder, model, 1_000_000, 1_000_000, cached=200_000, provider=entry.get("provider") or "openai")
        cached_price = entry.get("cached_input", entry["input"])
        expected = (800_000 * entry["input"] + 200_000 * cached_price + 1_000_000 * entry["output"]) / 1e6
        assert tel.span().attributes[names.LLM_COST] == pytest.approx(expected * rates[entry["currency"]], rel=1e-12)
        checked += 1
    assert checked == len(table["models"])


def test_builtin_table_entries_are_dated_sourced_and_ordered_specific_first():
    book = PriceBook(Settings())
    entries = book.entries()
    assert len(entries) >= 20 and not book.errors
    for entry in entries:
        assert entry.date and entry.source, entry
        sample = entry.match.replace("*", "-2025-01-01")
        assert book.lookup(entry.provider or "openai", sample) == entry, f"{entry.match} is shadowed"


def test_local_model_at_virtual_price_and_currency_conversion(telemetry_factory=None):
    virtual = {"match": "*", "provider": "transformers", "currency": "CNY", "input": 0.8, "output": 2.0}
    tel, tracer_provider, meter_provider = make_telemetry()
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            settings=Settings(prices=(virtual,), exchange_rates={"CNY": 0.14}))
    try:
        with usage_context(user_id="bob", department="research"):
            tm.gpt2().generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=5, logits_processor=forcing(4, [11]))
    finally:
        instrumentor.uninstrument()
    span = tel.span()
    expected = (4 * 0.8 + 5 * 2.0) / 1e6 * 0.14
    assert span.attributes[names.LLM_COST] == pytest.approx(expected, rel=1e-12)
    assert span.attributes[names.LLM_COST_CURRENCY] == "USD"
    totals = cost_totals(tel, names.USER_ID, names.GEN_AI_PROVIDER_NAME, names.CURRENCY)
    assert totals == {("bob", "transformers", "USD"): pytest.approx(expected, rel=1e-12)}


def test_unpriced_model_gets_no_cost_is_logged_once_and_shown_by_doctor(priced, caplog):
    recorder, tel = priced(builtin_prices=False)
    with caplog.at_level(logging.WARNING, logger="otel_tokens"):
        for _ in range(3):
            call(recorder, "mystery-model-x", 10, 10)
    assert all(names.LLM_COST not in s.attributes for s in tel.spans())
    assert names.METRIC_LLM_COST not in tel.metrics()
    assert tel.token_totals(names.GEN_AI_TOKEN_TYPE) == {("input",): 30, ("output",): 30}
    logged = [r.getMessage() for r in caplog.records if "mystery-model-x" in r.getMessage()]
    assert len(logged) == 1 and "no price" in logged[0]
    text = report(recorder=recorder)
    assert "mystery-model-x (openai): NO PRICE" in text
    assert "model 'mystery-model-x' (openai) was called and has no price" in text


def test_missing_exchange_rate_gives_no_cost(priced):
    recorder, tel = priced(prices=({"match": "yen-model", "currency": "JPY", "input": 100, "output": 100},))
    call(recorder, "yen-model", 10, 10)
    assert names.LLM_COST not in tel.span().attributes


def test_editing_the_price_file_changes_the_next_calls_cost(priced, tmp_path):
    price_file = tmp_path / "prices.yaml"
    price_file.write_text("version: 1\nmodels:\n  - {match: 'house-model', currency: USD, input: 1, output: 2}\n")
    recorder, tel = priced(price_file=price_file, price_reload_interval=0.0)
    call(recorder, "house-model", 1000, 1000)
    price_file.write_text("version: 1\nmodels:\n  - {match: 'house-model', currency: USD, input: 10, output: 20}\n")
    _stood_still(recorder)
    call(recorder, "house-model", 1000, 1000)
    first, second = tel.spans()
    assert first.attributes[names.LLM_COST] == pytest.approx(0.003, rel=1e-12)
    assert second.attributes[names.LLM_COST] == pytest.approx(0.03, rel=1e-12)
    # a broken edit keeps the prices read before, with one clear message
    price_file.write_text("version: 1\nmodels: [ {match: 'house-model'\n")
    _stood_still(recorder)
    call(recorder, "house-model", 1000, 1000)
    assert tel.spans()[2].attributes[names.LLM_COST] == pytest.approx(0.03, rel=1e-12)
    assert any("is not valid YAML" in e and str(price_file) in e for e in recorder.prices.errors)


def _stood_still(recorder) -> None:
    """Let the price file be seen twice, one settle interval (0.5 s) apart: it is then applied."""
    recorder.prices._maybe_reload()
    time.sleep(0.6)


def test_a_price_file_is_applied_only_once_it_stands_still_and_bad_reloads_are_named(priced, tmp_path, caplog):
    """A file written in place can be read half-written and still parse (a custom price lost, the built-in
    one 333 times cheaper taken): a change is applied once the file stood still for one interval."""
    price_file = tmp_path / "prices.yaml"
    price_file.write_text("version: 1\nmodels:\n  - {match: 'house-model', currency: USD, input: 1, output: 2}\n"
                          "  - {match: 'other-model', currency: USD, input: 1, output: 1}\n")
    recorder, tel = priced(price_file=price_file, price_reload_interval=0.0)
    price_file.write_text("version: 1\nmodels:\n  - {match: 'house-model', currency: USD, input: 0.01, output: 2}\n")
    call(recorder, "house-model", 1000, 0)  # just written: the old price still holds
    assert tel.spans()[-1].attributes[names.LLM_COST] == pytest.approx(0.001, rel=1e-12)
    os.utime(price_file, ns=(time.time_ns() + 3600 * 10**9,) * 2)  # an mtime in the future (skew) delays nothing
    recorder.prices._maybe_reload()
    call(recorder, "house-model", 1000, 0)  # seen once more but not yet still for an interval
    assert tel.spans()[-1].attributes[names.LLM_COST] == pytest.approx(0.001, rel=1e-12)
    time.sleep(0.6)
    with caplog.at_level(logging.WARNING, logger="otel_tokens"):
        call(recorder, "house-model", 1000, 0)
    assert tel.spans()[-1].attributes[names.LLM_COST] == pytest.approx(0.00001, rel=1e-12)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "no longer prices other-model" in messages and "cut the price of house-model" in messages


def test_inline_price_errors_name_the_config_field_and_every_missing_key():
    from otel_tokens.pricing import PriceBook

    book = PriceBook(Settings(prices=({"match": "m"}, {"match": "x", "currency": "USD", "input": 1, "output": -1})))
    assert any("prices[0].currency, input, output" in e and "are missing" in e for e in book.errors), book.errors
    assert any("prices[1].output" in e for e in book.errors), book.errors
    assert not any("models[" in e for e in book.errors)


def test_every_problem_of_a_price_entry_is_reported_at_once():
    from otel_tokens.pricing import PriceBook

    book = PriceBook(Settings(prices=({"match": " a", "currency": "dollars", "input": -1, "output": float("inf"),
                                       "colour": "red"},)))
    (message,) = book.errors
    assert "5 problems" in message, message
    for part in ("prices[0].colour", "prices[0].match", "prices[0].currency", "prices[0].input", "prices[0].output"):
        assert part in message, (part, message)


def test_doctor_lists_what_a_named_model_would_warn_about_under_warnings(capsys, monkeypatch):
    from otel_tokens import logs as safety
    from otel_tokens.ops.doctor import report
    from otel_tokens.tokens import tiktoken_files

    monkeypatch.setattr(safety, "_reported", set())
    monkeypatch.setattr(tiktoken_files, "search_dirs", lambda: [])  # a machine without o200k's file
    text = report(["gpt-4o"], settings=Settings())
    warnings = text.split("\nWarnings\n", 1)
    assert len(warnings) == 2 and "model 'gpt-4o' uses tiktoken's o200k_base" in warnings[1], text
    assert "TIKTOKEN_CACHE_DIR" in warnings[1]  # the real reason, and the fix
    assert "No warnings" not in text
    # nothing on stderr from the doctor (a guard poller another test of this worker left running may print there)
    assert [line for line in capsys.readouterr().err.splitlines() if not line.startswith("otel-tokens guard:")] == []
