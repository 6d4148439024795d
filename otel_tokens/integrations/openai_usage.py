"""Usage of an OpenAI-style response: the server's usage block when it has a sane one
(`reported`), else counted from the request and the response text with the model's tokenizer.

Servers vary (vLLM, Ollama, Xinference, FastChat, proxies): fields may be missing, null, of the
wrong type, negative or absurd, or the usage may sit inside `choices[0]`. A value we cannot trust
is dropped, never recorded: what we record is right or absent.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from otel_tokens import names
from otel_tokens.logs import log_once
from otel_tokens.quota.budget import bounds
from otel_tokens.recording.call import CallRecord, UsageEstimate
from otel_tokens.tokens.counting import HFTokenizer, TokenCounter

MAX_TOKENS = 1 << 31  # no single call uses two billion tokens: larger is garbage


class Usage(NamedTuple):
    input: int | None
    output: int | None
    cached: int | None = None
    reasoning: int | None = None


def get(obj: Any, name: str) -> Any:
    """Field of a pydantic model (including extra fields) or of a dict; None when absent.

    Reads the instance dict rather than getattr: a missing attribute on a pydantic model goes
    through `__getattr__` and an exception, ~2 us each, and that is the common case here."""
    if obj is None:
        return None
    if type(obj) is dict:
        return obj.get(name)
    fields = getattr(obj, "__dict__", None)
    if fields is not None and name in fields:
        return fields[name]
    extra = getattr(obj, "__pydantic_extra__", None)
    if extra:
        return extra.get(name)
    if isinstance(obj, Mapping):
        return obj.get(name)
    if fields is not None:
        return None
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value < MAX_TOKENS:
        return value
    return None


def parse_usage(usage: Any) -> Usage | None:
    if usage is None or isinstance(usage, (str, bytes, int, float, list)):
        return None
    input_tokens = _count(get(usage, "prompt_tokens"))
    if input_tokens is None:
        input_tokens = _count(get(usage, "input_tokens"))
    output_tokens = _count(get(usage, "completion_tokens"))
    if output_tokens is None:
        output_tokens = _count(get(usage, "output_tokens"))
    if input_tokens is None and output_tokens is None:
        return None
    details_in = get(usage, "prompt_tokens_details") or get(usage, "input_tokens_details")
    details_out = get(usage, "completion_tokens_details") or get(usage, "output_tokens_details")
    cached = _count(get(details_in, "cached_tokens"))
    reasoning = _count(get(details_out, "reasoning_tokens"))
    if cached is not None and (input_tokens is None or cached > input_tokens):
        cached = None
    if reasoning is not None and (output_tokens is None or reasoning > output_tokens):
        reasoning = None
    return Usage(input_tokens, output_tokens, cached, reasoning)


def find_usage(obj: Any) -> Usage | None:
    """The usage block of a response or chunk: top level, else inside choices[0] (odd servers)."""
    usage = parse_usage(get(obj, "usage"))
    if usage is None:
        choices = get(obj, "choices")
        if isinstance(choices, list) and choices:
            usage = parse_usage(get(choices[0], "usage"))
    return usage


def apply_usage(record: CallRecord, usage: Usage, embeddings: bool = False) -> None:
    record.input_tokens = usage.input
    record.output_tokens = None if embeddings else usage.output
    record.cache_read_input_tokens = usage.cached
    record.reasoning_output_tokens = usage.reasoning
    record.usage_source = names.SOURCE_REPORTED


def responses_output_text(response: Any) -> str | None:
    """The Responses API's `output_text` (a property that may raise on odd bodies); None for other responses."""
    try:
        text = getattr(response, "output_text", None)
    except Exception:
        return None
    return text if isinstance(text, str) else None


def response_texts(operation: str, response: Any) -> list[str]:
    """Generated text of a non-streamed response, for counting when there is no usage."""
    if operation == names.OPERATION_EMBEDDINGS:
        return []
    output_text = responses_output_text(response)
    if output_text is not None:
        return [output_text]
    texts = []
    choices = get(response, "choices")
    for choice in choices if isinstance(choices, list) else ():
        message = get(choice, "message")
        content = get(message, "content") if message is not None else get(choice, "text")
        if isinstance(content, str):
            texts.append(content)
        calls = get(message, "tool_calls")
        for call in calls if isinstance(calls, list) else ():  # not `true` or `5` from a broken server
            function = get(call, "function")
            texts.extend(str(get(function, k) or "") for k in ("name", "arguments"))
    return texts


def strings_or_ids(value: Any) -> tuple[list[str], int]:
    """Texts to tokenize and a count of token ids given directly (prompt/input as token arrays)."""
    if isinstance(value, str):
        return [value], 0
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return [], len(value)
        texts, ids = [], 0
        for v in value:
            t, i = strings_or_ids(v)
            texts.extend(t)
            ids += i
        return texts, ids
    return [], 0


def count_request(counter: TokenCounter, operation: str, model: str, kwargs: Mapping[str, Any]
                  ) -> tuple[int | None, str | None]:
    """Input tokens of a request, counted locally: (tokens, source)."""
    messages = kwargs.get("messages")
    if isinstance(messages, Iterable) and not isinstance(messages, (str, bytes, Mapping)):
        return counter.count_chat(model, list(messages), kwargs.get("tools") or kwargs.get("functions"))
    if "input" in kwargs and operation == names.OPERATION_CHAT:  # Responses API
        value = kwargs["input"]
        items = [{"role": "system", "content": kwargs["instructions"]}] if kwargs.get("instructions") else []
        if isinstance(value, str):
            items.append({"role": "user", "content": value})
        elif isinstance(value, list):
            items.extend(value)
        return counter.count_chat(model, items, kwargs.get("tools"))
    value = kwargs.get("prompt", kwargs.get("input"))
    texts, ids = strings_or_ids(value)
    if not texts and not ids:
        return None, None
    count, source = counter.count_text(model, texts) if texts else (0, names.SOURCE_COUNTED)
    return count + ids, source


class Ending(NamedTuple):
    """How a reply's choices ended, for counting it without usage."""

    stops: int = 0  # choices that ended on their own (finish_reason "stop"): a local server counts their EOS
    tool_calls: bool = False  # a choice called a tool


def response_ending(response: Any) -> Ending:
    choices = get(response, "choices")
    stops, tools = 0, False
    for choice in choices if isinstance(choices, list) else ():
        reason = get(choice, "finish_reason")
        stops += reason == "stop"
        calls = get(get(choice, "message"), "tool_calls")
        tools = tools or reason in ("tool_calls", "function_call") or (isinstance(calls, list) and bool(calls))
    return Ending(stops, tools)


def count_locally(record: CallRecord, counter: TokenCounter, kwargs: Mapping[str, Any], texts: list[str],
                  ending: Ending | None = None) -> None:
    """Fill the record from the tokenizer when the server reported nothing."""
    model = record.request_model
    input_tokens, input_source = count_request(counter, record.operation, model, kwargs)
    output_tokens, output_source = None, None
    if record.operation != names.OPERATION_EMBEDDINGS:
        output_tokens, output_source = _count_output(counter, model, kwargs, texts, ending or Ending())
    if output_tokens is not None and reasons(model, kwargs):
        output_source = names.SOURCE_ESTIMATED
        log_once(f"reasoning:{model}", "otel-tokens: %s is a reasoning model: the output tokens it bills include "
                 "reasoning its reply text does not show, so without a usage block they are estimated (too low: "
                 "27 counted for 228 billed, seen on gpt-5-nano). Ask the server for usage (stream_include_usage)",
                 model)
    record.input_tokens, record.output_tokens = input_tokens, output_tokens
    sources = {s for s in (input_source, output_source) if s is not None}
    if sources:
        record.usage_source = names.SOURCE_ESTIMATED if names.SOURCE_ESTIMATED in sources else names.SOURCE_COUNTED


_REASONING_MODEL = re.compile(r"(?:^|/)(?:o[1-9](?:$|[-.])|gpt-5|gpt-oss|deepseek-r1|deepseek-reasoner|qwq)",
                              re.IGNORECASE)


def reasons(model: str, kwargs: Mapping[str, Any]) -> bool:
    """Whether the call's output includes reasoning tokens that are not in its reply text: a reasoning
    model family (o1/o3/o4, gpt-5, gpt-oss, DeepSeek-R1, QwQ), or a request that asks for reasoning."""
    if kwargs.get("reasoning_effort") is not None or kwargs.get("reasoning") is not None:
        return True
    body = kwargs.get("extra_body")
    if isinstance(body, Mapping) and (body.get("reasoning_effort") is not None or body.get("reasoning") is not None):
        return True
    return bool(_REASONING_MODEL.search(model or ""))


def _count_output(counter: TokenCounter, model: str, kwargs: Mapping[str, Any], texts: list[str],
                  ending: Ending) -> tuple[int, str]:
    """The output re-tokenized from its text, at most what the request's output limit allows (x `n`): a
    decoded text does not always re-tokenize to the tokens generated (23 counted for a stream capped at
    12), so a count over the limit is cut to it and called estimated, not counted. A local model's
    server (vLLM, TGI, transformers) counts the EOS that ended a choice, which its text does not show:
    added. A stop string's tokens and a tool call's framing are billed and not in the text: estimated."""
    count, source = counter.count_text(model, texts)
    if ending.stops and isinstance(counter.tokenizer(model), HFTokenizer):
        count += ending.stops
        if kwargs.get("stop"):
            source = names.SOURCE_ESTIMATED
    if ending.tool_calls and source == names.SOURCE_COUNTED:
        source = names.SOURCE_ESTIMATED
        log_once(f"tool-calls:{model}", "otel-tokens: %s: a reply with tool calls counted from their names and "
                 "arguments, without the provider's framing around them (9 counted for 16 billed, seen on "
                 "gpt-4o); marked estimated. Ask the server for usage (stream_include_usage)", model)
    limit = output_limit(kwargs)
    if not limit:  # none set, or 0 (which some servers read as no limit)
        return count, source
    choices = _sent_count(kwargs, "n")  # the text is every returned choice's
    if count > limit * choices:
        log_once(f"over-limit:{model}", "otel-tokens: %s: a reply re-tokenized to more tokens than its "
                 "max_tokens allows; counted as the limit and marked estimated. Ask the server for usage "
                 "(stream_options include_usage, or stream_include_usage: true)", model)
        return limit * choices, names.SOURCE_ESTIMATED
    return count, source


OUTPUT_LIMITS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
SDK_SENTINELS = ("NotGiven", "Omit")  # the openai SDK's "argument not given" values: nothing is sent


def _sent(kwargs: Mapping[str, Any], key: str) -> list[Any]:
    """What the server receives for `key`: the body's value (`extra_body` wins over the argument, as the
    SDK merges it last) and the query's (`extra_query`), each present one."""
    values = []
    body, query = kwargs.get("extra_body"), kwargs.get("extra_query")
    if isinstance(body, Mapping) and key in body:
        values.append(body[key])
    elif key in kwargs and kwargs[key] is not None and type(kwargs[key]).__name__ not in SDK_SENTINELS:
        values.append(kwargs[key])
    if isinstance(query, Mapping) and key in query:
        values.append(query[key])
    return values


def _request_count(value: Any) -> int | None:
    """A positive count as a server reads it (a query string's "1500" included); None otherwise."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return value if type(value) is int and value > 0 else None


def _sent_count(kwargs: Mapping[str, Any], *keys: str) -> int:
    """The most choices the server makes as it receives the request (`n`, `best_of`), at least 1."""
    return max((_request_count(value) or 1 for key in keys for value in _sent(kwargs, key)), default=1)


def output_limit(kwargs: Mapping[str, Any]) -> int | None:
    """The most output a request can make the server generate per choice: the largest output limit it
    sends (max_completion_tokens, max_tokens or max_output_tokens; arguments, `extra_body`, `extra_query`).
    None, so the reservation's default applies, when it sends none, or any that is not a positive count
    (0, negative, null: servers read 0 as "no limit")."""
    values = [value for key in OUTPUT_LIMITS for value in _sent(kwargs, key)]
    counts = [_request_count(value) for value in values]
    if not counts or None in counts:
        return None
    return max(counts)  # type: ignore[type-var]


def estimate_request(operation: str, kwargs: Mapping[str, Any], counter: TokenCounter | None = None) -> UsageEstimate:
    """The worst case of a request before it is sent, what a budget reservation holds: an upper
    bound of its input tokens from the arguments' bytes (budget/bounds.py), the output limit it
    asked for (max_completion_tokens, max_tokens or max_output_tokens) and `n`; with `counter`, how to count
    a plain chat prompt exactly (TokenCounter.exact_chat), used only near a limit."""
    messages = kwargs.get("messages")
    if isinstance(messages, (list, tuple)):  # the wrapper turned any other iterable into a list
        input_bound = bounds.chat_bound(messages, kwargs.get("tools") or kwargs.get("functions"))
    elif "input" in kwargs and operation == names.OPERATION_CHAT:  # Responses API
        value = kwargs["input"]
        items: list[Any] = [{"role": "system", "content": kwargs["instructions"]}] if kwargs.get("instructions") else []
        items.extend([{"role": "user", "content": value}] if isinstance(value, str) else
                     value if isinstance(value, list) else [])
        input_bound = bounds.chat_bound(items, kwargs.get("tools"))
    else:
        input_bound = bounds.inputs_bound(kwargs.get("prompt", kwargs.get("input")))
    if operation == names.OPERATION_EMBEDDINGS:
        return UsageEstimate(input_bound, 0)
    limit = output_limit(kwargs)
    # the server generates best_of completions (completions API) and bills every one
    choices = _sent_count(kwargs, "n", "best_of")
    exact = None
    if counter is not None and isinstance(messages, (list, tuple)) and not kwargs.get("tools") \
            and not kwargs.get("functions"):
        exact = functools.partial(counter.exact_chat, messages=messages)
    return UsageEstimate(input_bound, limit, choices, exact)
