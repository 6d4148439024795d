"""OpenAI-shaped requests and responses as GenAI semconv messages, for opt-in content capture.

Only called when OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT is on. Text, tool calls and
tool results are kept; other parts (images, audio, files) are named by type without their data,
so a capture never copies megabytes of base64 onto a span.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from otel_tokens import names
from otel_tokens.integrations.openai_usage import get, responses_output_text, strings_or_ids
from otel_tokens.recording.call import CallRecord

Message = dict[str, Any]
_TEXT_TYPES = ("text", "input_text", "output_text")


def _text(content: str) -> dict[str, Any]:
    return {"type": "text", "content": content}


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [_text(content)]
    parts: list[dict[str, Any]] = []
    if isinstance(content, list):
        for part in content:
            kind = get(part, "type")
            text = get(part, "text")
            if kind in _TEXT_TYPES and isinstance(text, str):
                parts.append(_text(text))
            elif isinstance(part, str):
                parts.append(_text(part))
            elif isinstance(kind, str):
                parts.append({"type": kind})  # an image, audio or file: its type only, never its data
    return parts


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    out = []
    for call in calls if isinstance(calls, list) else ():
        function = get(call, "function")
        out.append({"type": "tool_call", "id": get(call, "id"), "name": get(function, "name"),
                    "arguments": get(function, "arguments")})
    return out


def _message(item: Any) -> Message | None:
    role = get(item, "role")
    kind = get(item, "type")
    if kind == "function_call_output":  # Responses API tool result
        return {"role": "tool", "parts": [{"type": "tool_call_response", "id": get(item, "call_id"),
                                           "response": get(item, "output")}]}
    if kind == "function_call":
        return {"role": "assistant", "parts": [{"type": "tool_call", "id": get(item, "call_id"),
                                                "name": get(item, "name"), "arguments": get(item, "arguments")}]}
    if not isinstance(role, str):
        return None
    if role == "tool":
        return {"role": "tool", "parts": [{"type": "tool_call_response", "id": get(item, "tool_call_id"),
                                           "response": get(item, "content")}]}
    return {"role": role, "parts": _parts(get(item, "content")) + _tool_calls(get(item, "tool_calls"))}


def _messages(items: Any) -> list[Message]:
    if not isinstance(items, Iterable) or isinstance(items, (str, bytes, Mapping)):
        return []
    return [m for m in map(_message, items) if m is not None]


def capture_request(record: CallRecord, kwargs: Mapping[str, Any]) -> None:
    """Input messages (and separately given system instructions) of a chat, completion or Responses call."""
    if record.operation == names.OPERATION_EMBEDDINGS:
        return  # semconv defines no input content for embeddings
    if "messages" in kwargs:
        record.input_messages = _messages(kwargs["messages"])
    elif "input" in kwargs:  # Responses API
        value = kwargs["input"]
        record.input_messages = ([{"role": "user", "parts": [_text(value)]}] if isinstance(value, str)
                                 else _messages(value))
        instructions = kwargs.get("instructions")
        if isinstance(instructions, str):
            record.system_instructions = [_text(instructions)]
    elif "prompt" in kwargs:
        texts, _ = strings_or_ids(kwargs["prompt"])  # token-id prompts have no text to capture
        record.input_messages = [{"role": "user", "parts": [_text(t) for t in texts]}]


def capture_response(record: CallRecord, response: Any) -> None:
    """Output messages of a non-streamed response: one per choice, with its finish reason."""
    if record.operation == names.OPERATION_EMBEDDINGS:
        return
    output_text = responses_output_text(response)
    if output_text is not None:
        status = get(response, "status")
        record.output_messages = [{"role": "assistant", "parts": [_text(output_text)],
                                   "finish_reason": status if isinstance(status, str) else "stop"}]
        return
    choices = get(response, "choices")
    messages = []
    for choice in choices if isinstance(choices, list) else ():
        message = get(choice, "message")
        if message is not None:
            out = _message(message) or {"role": "assistant", "parts": []}
        else:
            text = get(choice, "text")
            out = {"role": "assistant", "parts": [_text(text)] if isinstance(text, str) else []}
        reason = get(choice, "finish_reason")
        out["finish_reason"] = reason if isinstance(reason, str) else ""
        messages.append(out)
    record.output_messages = messages


def stream_output(texts: Mapping[int, list[str]], reasons: Mapping[int, str]) -> list[Message]:
    """Output messages of a stream from the text deltas seen per choice index (however far it got)."""
    return [{"role": "assistant", "parts": [_text("".join(texts[i]))] if texts.get(i) else [],
             "finish_reason": reasons.get(i, "")} for i in sorted({*texts, *reasons})]
