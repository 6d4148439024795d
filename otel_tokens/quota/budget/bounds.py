"""Upper bounds of a request's input tokens that need no tokenizer.

Byte-level BPE tokenizers (GPT, Llama 3, Qwen, DeepSeek) and SentencePiece with byte fallback
(Llama 2, ChatGLM, Mistral) never make more tokens of a text than it has UTF-8 bytes. What the
server adds around the text (the chat template's special tokens and role headers, a default system
prompt some templates inject, tool instructions) is covered by allowances. Non-text parts (images,
audio, files) cost what the provider's own accounting says, which bytes cannot bound: each is
reserved at a fixed allowance, the one figure here that is an assumption, not a proof.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

BASE = 64  # per request: BOS, the reply priming, a default system prompt a template may inject
PER_MESSAGE = 16  # per chat message: template tokens around it
PER_SEGMENT = 4  # per text of a completions / embeddings input: BOS/EOS
TOOLS = 512  # the instructions a template wraps around tool definitions
NON_TEXT_PART = 2048  # an image / audio / file part (provider-accounted; not provable from bytes)
_TEXT_PARTS = ("text", "input_text", "output_text")


def text_bound(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _plain(value: Any) -> Any:
    """A pydantic object (the SDK's own message and part types, which the OpenAI docs append to
    `messages`) as the dict it sends; anything else unchanged."""
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        try:
            return dump(exclude_none=True)
        except Exception:
            return value
    return value


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))


def _content_bound(content: Any) -> int:
    content = _plain(content)
    if content is None:
        return 0
    if isinstance(content, str):
        return text_bound(content)
    if not isinstance(content, (list, tuple)):
        return _json_bytes(content)
    total = 0
    for part in content:
        part = _plain(part)
        if isinstance(part, str):
            total += text_bound(part)
        elif isinstance(part, Mapping) and part.get("type") in _TEXT_PARTS and isinstance(part.get("text"), str):
            total += text_bound(part["text"])
        else:
            total += NON_TEXT_PART
    return total


def message_bound(message: Any) -> int:
    message = _plain(message)
    if not isinstance(message, Mapping):
        return PER_MESSAGE + _content_bound(message)
    total = PER_MESSAGE + _content_bound(message.get("content"))
    for key, value in message.items():
        if key == "content" or value is None:
            continue
        total += text_bound(value) if isinstance(value, str) else _json_bytes(_plain(value))  # role, tool_calls
    return total


def chat_bound(messages: Iterable[Any], tools: Any = None) -> int:
    """`messages` must be a list or tuple (an iterator would be used up before the SDK sends it)."""
    total = BASE + sum(message_bound(m) for m in messages)
    if tools:
        total += TOOLS + _json_bytes([_plain(t) for t in tools] if isinstance(tools, (list, tuple)) else tools)
    return total


def inputs_bound(value: Any) -> int:
    """A completions prompt or an embeddings input: text(s) or token id array(s)."""
    if isinstance(value, str):
        return PER_SEGMENT + text_bound(value)
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return len(value)
        return sum(inputs_bound(v) for v in value)
    return 0 if value is None else PER_SEGMENT + _json_bytes(value)
