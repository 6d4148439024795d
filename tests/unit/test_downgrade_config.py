"""The `downgrade:` mapping's targets as the config reads them: a model name, or a model on another server."""

from __future__ import annotations

import pytest
import yaml

from otel_tokens.config import load_settings
from otel_tokens.config.settings import DowngradeTarget, Endpoint


def _rules(tmp_path, target, **extra):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**extra, "guard": {"source": "http://guard:9095/state", "rules": [
        {"scope": "user", "action": "downgrade", "level": "warning", "downgrade": {"gpt-4o*": target}}]}}))
    return load_settings({"OTEL_TOKENS_CONFIG": str(config)})


def test_a_plain_name_stays_on_the_callers_server_and_a_mapping_names_another(tmp_path):
    assert _rules(tmp_path, "gpt-4o-mini").guard.rules[0].downgrade == (("gpt-4o*", DowngradeTarget("gpt-4o-mini")),)
    settings = _rules(tmp_path, {"model": "qwen2.5-7b-instruct", "base_url": "http://vllm.internal:8000/v1",
                                 "api_key_env": "LOCAL_LLM_KEY"}, providers={"vllm.*": "vllm"})
    assert settings.errors == ()
    target = settings.guard.rules[0].downgrade[0][1]
    assert target == DowngradeTarget("qwen2.5-7b-instruct", Endpoint("http://vllm.internal:8000/v1", "vllm.internal",
                                                                     8000, "LOCAL_LLM_KEY", "vllm"))
    # no provider named and no host glob: the caller's provider prices it (None here)
    https = _rules(tmp_path, {"model": "m", "base_url": "https://llm.corp/v1"}).guard.rules[0].downgrade[0][1]
    assert (https.endpoint.host, https.endpoint.port, https.endpoint.provider) == ("llm.corp", 443, None)
    assert https.moves("m")  # the same model name elsewhere is a move too
    assert not DowngradeTarget("m").moves("m")


def test_the_key_is_read_from_its_variable_at_call_time(monkeypatch):
    from otel_tokens.integrations.openai_endpoints import api_key

    endpoint = Endpoint("http://127.0.0.1:1/v1", "127.0.0.1", 1, "LOCAL_LLM_KEY")
    monkeypatch.delenv("LOCAL_LLM_KEY", raising=False)
    assert api_key(endpoint) == "EMPTY"  # what vLLM and Xinference accept; never the caller's key
    monkeypatch.setenv("LOCAL_LLM_KEY", "k1")
    assert api_key(endpoint) == "k1"


@pytest.mark.parametrize(("target", "names"), [
    ({"model": "m", "base_url": "ftp://x/v1"}, "downgrade['gpt-4o*'].base_url 'ftp://x/v1', not an http(s) URL"),
    ({"base_url": "http://x/v1"}, "downgrade['gpt-4o*'].model None"),
    ({"model": "m", "base_url": "http://x/v1", "api_key": "sk-1"}, "unknown field 'api_key'"),
    ({"model": "m", "base_url": "http://x/v1", "api_key_env": "MY KEY"}, "api_key_env 'MY KEY'"),
    ({"model": "m", "base_url": "http:///v1"}, "with no host"),
    (["m"], "not a model name or a mapping"),
])
def test_a_bad_target_is_named_with_its_field(tmp_path, target, names):
    settings = _rules(tmp_path, target)
    assert len(settings.errors) == 1 and names in settings.errors[0] and "rules[0]" in settings.errors[0]


def test_doctor_shows_where_each_downgrade_sends_its_calls_and_a_missing_key(tmp_path, monkeypatch):
    from otel_tokens.ops.doctor import report

    monkeypatch.delenv("LOCAL_LLM_KEY", raising=False)
    settings = _rules(tmp_path, {"model": "qwen2.5-7b-instruct", "base_url": "http://vllm.internal:8000/v1",
                                 "api_key_env": "LOCAL_LLM_KEY"})
    text = report(settings=settings)
    assert ("downgrade (user, warning) gpt-4o* -> qwen2.5-7b-instruct at http://vllm.internal:8000/v1, key from "
            "LOCAL_LLM_KEY NOT SET") in text
    assert "reads its key from LOCAL_LLM_KEY, which is not set" in text
    monkeypatch.setenv("LOCAL_LLM_KEY", "k")
    text = report(settings=settings)
    assert "at http://vllm.internal:8000/v1, key from LOCAL_LLM_KEY\n" in text and "NOT SET" not in text
