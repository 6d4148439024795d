"""What an OpenAI-style request gets from us, for every client speaking that wire format (the openai
SDK, litellm): trace headers, the usage chunk of a stream, and the fallback for a server that
refuses `stream_options` (remembered per server, so it is asked once)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from otel_tokens.integrations.openai_usage import OUTPUT_LIMITS, SDK_SENTINELS
from otel_tokens.logs import internal_error, log_once
from otel_tokens.recording.call import Call

NO_STREAM_OPTIONS: set[str] = set()  # servers that refused stream_options: never asked again


def wants_usage_chunk(call: Call) -> bool:
    return server_key(call) not in NO_STREAM_OPTIONS


def with_headers(kwargs: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
    """kwargs with the propagation headers in extra_headers; headers the caller set win."""
    if not headers:
        return kwargs
    user_headers = kwargs.get("extra_headers")
    if isinstance(user_headers, Mapping):
        given = {k.lower() for k in user_headers}
        merged = {**{k: v for k, v in headers.items() if k.lower() not in given}, **user_headers}
    else:
        merged = dict(headers)
    return {**kwargs, "extra_headers": merged}


def with_usage_chunk(kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Ask for the usage chunk when the caller did not; True when the chunk must be hidden."""
    options = kwargs.get("stream_options")
    if isinstance(options, Mapping) and options.get("include_usage") is not None:
        return kwargs, False
    merged = {**options, "include_usage": True} if isinstance(options, Mapping) else {"include_usage": True}
    return {**kwargs, "stream_options": merged}, True


def server_key(call: Call) -> str:
    return f"{call.record.server_address}:{call.record.server_port}"


def refused_stream_options(error: BaseException) -> bool:
    """Whether the server refused the `stream_options` we added: HTTP 400/422 whose error names it (OpenAI's
    `param`, its message, or a pydantic `loc`), never a body that merely echoes the request (FastAPI's
    422 repeats the input, stream_options included)."""
    try:
        if getattr(error, "status_code", None) not in (400, 422):
            return False
        body = getattr(error, "body", None)
        if body is None:  # litellm's own HTTP routes keep the server's answer only in the message
            body = _body_of(str(getattr(error, "message", None) or error))
        details = body.get("detail") if isinstance(body, Mapping) else None
        if isinstance(details, list):  # pydantic: [{"loc": [...], "msg": ..., "input": <the request>}]
            return any(isinstance(d, Mapping) and "stream_options" in map(str, d.get("loc") or ()) for d in details)
        inner = body.get("error", body) if isinstance(body, Mapping) else {}
        inner = inner if isinstance(inner, Mapping) else {"message": inner}
        named = f"{inner.get('param') or ''} {inner.get('message') or ''}" if inner else str(body or "")
        return "stream_options" in named or "include_usage" in named
    except Exception:
        internal_error("stream_options fallback")
        return False


def _body_of(message: str) -> Any:
    """The JSON object inside an error message (`... - {"error": ...}`), else the message."""
    start = message.find("{")
    if start >= 0:
        try:
            found, _ = json.JSONDecoder().raw_decode(message[start:start + 65536])
            return found
        except ValueError:
            pass
    return message


def stop_asking(call: Call) -> None:
    key = server_key(call)
    if len(NO_STREAM_OPTIONS) < 10_000:
        NO_STREAM_OPTIONS.add(key)
    log_once(f"no-stream-options:{key}", "otel-tokens: %s refused stream_options; its streams are counted "
             "locally from now on", key)


def with_output_limit(kwargs: dict[str, Any], limit: int, add_missing: bool = True) -> dict[str, Any]:
    """`fit`: every output limit the server would read (the argument, `extra_body`, `extra_query`) lowered to
    `limit` per choice, in the caller's own parameter (`max_completion_tokens` stays that: reasoning models refuse
    `max_tokens`); a request that sends none gets `max_tokens` (`max_output_tokens` for the Responses API). The
    caller's dictionaries are not changed."""
    out, found = dict(kwargs), False
    for key in OUTPUT_LIMITS:
        value = out.get(key)
        if value is not None and type(value).__name__ not in SDK_SENTINELS:
            out[key], found = limit, True
        for extra in ("extra_body", "extra_query"):
            holder = out.get(extra)
            if isinstance(holder, Mapping) and key in holder:
                out[extra], found = {**holder, key: limit}, True
    if not found and add_missing:
        responses = "messages" not in out and "prompt" not in out and "input" in out
        out["max_output_tokens" if responses else "max_tokens"] = limit
    return out
