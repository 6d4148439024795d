"""The `openai` SDK (1.26 to 3.x) and everything built on it (LangChain's ChatOpenAI,
Langchain-Chatchat against vLLM, Xinference, Ollama, FastChat...).

Wraps `create` (and `parse`) of chat completions, completions, embeddings and responses, sync and
async; `with_raw_response` and `.stream()` helpers go through these too. Streams are returned
behind a proxy (openai_stream.py); usage comes from the server or is counted (openai_usage.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import wrapt
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, unwrap
from opentelemetry.trace import SpanKind

from otel_tokens import names
from otel_tokens.config.providers import provider_for_host
from otel_tokens.integrations.openai_content import capture_request, capture_response
from otel_tokens.integrations.openai_endpoints import moved
from otel_tokens.integrations.openai_request import (
    NO_STREAM_OPTIONS,
    refused_stream_options,
    stop_asking,
    wants_usage_chunk,
    with_headers,
    with_output_limit,
    with_usage_chunk,
)
from otel_tokens.integrations.openai_stream import AsyncStreamProxy, StreamProxy, StreamState
from otel_tokens.integrations.openai_usage import (
    apply_usage,
    count_locally,
    estimate_request,
    find_usage,
    get,
    response_ending,
    response_texts,
)
from otel_tokens.logs import internal_error
from otel_tokens.recording.call import Call
from otel_tokens.recording.recorder import Recorder

LIBRARY = "openai"
REQUIREMENT = "openai >= 1.26"

# (module, class, method, operation)
_TARGETS = (
    ("openai.resources.chat.completions", "Completions", "create", names.OPERATION_CHAT),
    ("openai.resources.chat.completions", "Completions", "parse", names.OPERATION_CHAT),
    ("openai.resources.chat.completions", "AsyncCompletions", "create", names.OPERATION_CHAT),
    ("openai.resources.chat.completions", "AsyncCompletions", "parse", names.OPERATION_CHAT),
    ("openai.resources.completions", "Completions", "create", names.OPERATION_TEXT_COMPLETION),
    ("openai.resources.completions", "AsyncCompletions", "create", names.OPERATION_TEXT_COMPLETION),
    ("openai.resources.embeddings", "Embeddings", "create", names.OPERATION_EMBEDDINGS),
    ("openai.resources.embeddings", "AsyncEmbeddings", "create", names.OPERATION_EMBEDDINGS),
    ("openai.resources.responses", "Responses", "create", names.OPERATION_CHAT),
    ("openai.resources.responses", "Responses", "parse", names.OPERATION_CHAT),
    ("openai.resources.responses", "AsyncResponses", "create", names.OPERATION_CHAT),
    ("openai.resources.responses", "AsyncResponses", "parse", names.OPERATION_CHAT),
)

class _Instrumentation:
    """This integration's state while instrumented (one per process: wrapt's import hooks are global)."""

    def __init__(self) -> None:
        self.recorder: Recorder | None = None
        self.patched: list[tuple[Any, str]] = []
        self.hook_registered = False
        self.servers: dict[str, tuple[str | None, int | None, str]] = {}
        self.stream_types: tuple[type, ...] = ()
        self.async_stream_types: tuple[type, ...] = ()
        self.raw_types: tuple[type, ...] = ()
        self.no_stream_options = NO_STREAM_OPTIONS  # servers that refused stream_options: never asked again


_state = _Instrumentation()


def _server(instance: Any, recorder: Recorder) -> tuple[str | None, int | None, str]:
    """(server.address, server.port, provider name) of the client behind a resource."""
    client = getattr(instance, "_client", None)
    url = getattr(client, "_base_url", None) or getattr(client, "base_url", None)
    key = str(url)
    found = _state.servers.get(key)
    if found is None:
        host = getattr(url, "host", None) or None
        port = getattr(url, "port", None)
        if port is None:
            port = {"https": 443, "http": 80}.get(getattr(url, "scheme", ""), None)
        provider = provider_for_host(recorder.settings.providers, host, port, recorder.settings.provider_name)
        found = _state.servers[key] = (host, port, provider)
    return found


def _make_wrapper(operation: str, is_async: bool) -> Any:
    def begin(instance: Any, kwargs: dict[str, Any], recorder: Recorder) -> tuple[Call, dict[str, Any]]:
        """The call begun (the guard's refusal passes through) and the kwargs with the model it chose."""
        model = kwargs.get("model")
        model = model if isinstance(model, str) and model else "unknown"
        try:
            address, port, provider = _server(instance, recorder)
        except Exception:
            internal_error("openai server")
            address, port, provider = None, None, recorder.settings.provider_name
        streaming = kwargs.get("stream") is True
        messages = kwargs.get("messages")
        if messages is not None and not isinstance(messages, (list, tuple, str, bytes, dict)):
            # an iterator would be used up by our estimate or count before the SDK sends it; the
            # SDK sends the same list (an exception the caller's iterator raises passes through)
            kwargs = {**kwargs, "messages": list(messages)}
        call = recorder.begin(operation, provider, model, SpanKind.CLIENT, server_address=address, server_port=port,
                              streaming=streaming,
                              estimate=lambda: estimate_request(operation, kwargs, recorder.tokens))
        if call.model != model:
            kwargs = {**kwargs, "model": call.model}
        if call.output_limit is not None:  # fitted to what remains of the budget
            kwargs = with_output_limit(kwargs, call.output_limit)
        return call, kwargs

    def sender(wrapped: Any, instance: Any, call: Call, is_async: bool) -> Any:
        """What sends the call: the caller's client, or one of the server a downgrade moved it to."""
        if call.endpoint is None:
            return wrapped
        try:
            return moved(wrapped, instance, call.endpoint, is_async)
        except Exception:
            internal_error("openai downgrade endpoint")
            return wrapped

    def prepare(call: Call, kwargs: dict[str, Any], recorder: Recorder) -> tuple[dict[str, Any], bool]:
        """What is sent (usage chunk asked for, trace headers added) and whether to hide the usage chunk."""
        call_kwargs, hide = kwargs, False
        if not call.live:  # inside a covering call (litellm's own SDK use): sent exactly as written
            return call_kwargs, hide
        try:
            if recorder.settings.capture_content:
                capture_request(call.record, kwargs)
            if (call.record.streaming and recorder.settings.stream_include_usage
                    and ("messages" in kwargs or "prompt" in kwargs)
                    and wants_usage_chunk(call)):
                call_kwargs, hide = with_usage_chunk(kwargs)
            call_kwargs = with_headers(call_kwargs, recorder.outgoing_headers(call))
        except Exception:
            internal_error("openai request options")
        return call_kwargs, hide

    def done(result: Any, call: Call, kwargs: dict[str, Any], hide: bool, recorder: Recorder) -> Any:
        try:
            return _take_result(result, call, kwargs, hide, recorder, operation)
        except Exception:
            internal_error("openai result")
            recorder.finish(call)
            return result

    if is_async:
        async def async_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            recorder = _state.recorder
            if recorder is None or not is_instrumentation_enabled():
                return await wrapped(*args, **kwargs)
            call, kwargs = begin(instance, kwargs, recorder)
            send = sender(wrapped, instance, call, True)
            with call:
                call_kwargs, hide = prepare(call, kwargs, recorder)
                try:
                    result, refused = await send(*args, **call_kwargs), False
                except Exception as error:
                    if not (hide and refused_stream_options(error)):
                        raise
                    refused = True
                if refused:  # outside the except: the caller's traceback carries none of our first try
                    stop_asking(call)
                    call_kwargs, hide = prepare(call, kwargs, recorder)  # as the caller asked: no usage chunk
                    result = await send(*args, **call_kwargs)
            return done(result, call, kwargs, hide, recorder)

        return async_wrapper

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        recorder = _state.recorder
        if recorder is None or not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        call, kwargs = begin(instance, kwargs, recorder)
        send = sender(wrapped, instance, call, False)
        with call:
            call_kwargs, hide = prepare(call, kwargs, recorder)
            try:
                result, refused = send(*args, **call_kwargs), False
            except Exception as error:
                if not (hide and refused_stream_options(error)):
                    raise
                refused = True
            if refused:  # outside the except: the caller's traceback carries none of our first try
                stop_asking(call)
                call_kwargs, hide = prepare(call, kwargs, recorder)  # as the caller asked: no usage chunk
                result = send(*args, **call_kwargs)
        return done(result, call, kwargs, hide, recorder)

    return wrapper


def _load_types() -> None:
    """The SDK's stream and raw-response classes (present in 1.x and 3.x), for cheap type checks."""
    import openai

    _state.stream_types = (openai.Stream,)
    _state.async_stream_types = (openai.AsyncStream,)
    raw = []
    for module_name, class_names in (("openai._legacy_response", ("LegacyAPIResponse",)),
                                     ("openai._response", ("APIResponse", "AsyncAPIResponse"))):
        try:
            module = __import__(module_name, fromlist=["_"])
        except ImportError:
            continue
        raw.extend(getattr(module, name) for name in class_names if hasattr(module, name))
    _state.raw_types = tuple(raw)


def _take_result(result: Any, call: Call, kwargs: dict[str, Any], hide: bool, recorder: Recorder,
                 operation: str) -> Any:
    if isinstance(result, _state.stream_types):
        return StreamProxy(result, StreamState(recorder, call, kwargs, hide))
    if isinstance(result, _state.async_stream_types):
        return AsyncStreamProxy(result, StreamState(recorder, call, kwargs, hide))
    if isinstance(result, _state.raw_types):
        return _raw_response(result, call, kwargs, hide, recorder, operation)
    _record_response(result, call, kwargs, recorder, operation)
    recorder.finish(call)
    return result


def _record_response(response: Any, call: Call, kwargs: Mapping[str, Any], recorder: Recorder,
                     operation: str) -> None:
    record = call.record
    model = get(response, "model")
    if isinstance(model, str) and model:
        record.response_model = model
    usage = find_usage(response)
    if usage is not None:
        apply_usage(record, usage, embeddings=operation == names.OPERATION_EMBEDDINGS)
    else:
        count_locally(record, recorder.tokens, kwargs, response_texts(operation, response),
                      response_ending(response))
    if recorder.settings.capture_content:
        try:
            capture_response(record, response)
        except Exception:
            internal_error("openai response content")


def _raw_response(raw: Any, call: Call, kwargs: dict[str, Any], hide: bool, recorder: Recorder,
                  operation: str) -> Any:
    """`with_raw_response` / `with_streaming_response`: usage is taken when the caller parses; a
    response never parsed is recorded without usage when it is garbage collected."""
    import weakref

    original = raw.parse
    finished = weakref.finalize(raw, recorder.finish, call)
    parsed: list[Any] = []

    def take(value: Any) -> Any:
        if parsed:
            return parsed[0]
        finished.detach()
        parsed.append(_take_result(value, call, kwargs, hide, recorder, operation))
        return parsed[0]

    def parse(*args: Any, **kw: Any) -> Any:
        value = original(*args, **kw)
        if inspect.isawaitable(value):
            async def awaited() -> Any:
                return take(await value)
            return awaited()
        return take(value)

    try:
        raw.parse = parse
    except Exception:
        finished.detach()
        recorder.finish(call)
        return raw
    if kwargs.get("stream") is not True and type(raw).__name__ == "LegacyAPIResponse":
        raw.parse()  # body already read; parsed once and cached by the SDK, so the caller's parse() is free
    return raw


def _patch(module: Any) -> None:
    if _state.recorder is None or _state.patched:
        return
    import importlib

    _load_types()
    for module_name, class_name, method, operation in _TARGETS:
        try:
            owner = getattr(importlib.import_module(module_name), class_name)
            function = owner.__dict__.get(method)
        except (ImportError, AttributeError):
            continue
        if function is None or isinstance(function, wrapt.FunctionWrapper):
            continue
        # the SDK's async methods are sync-looking wrappers (`required_args`) returning coroutines
        is_async = inspect.iscoroutinefunction(function) or class_name.startswith("Async")
        wrapt.wrap_function_wrapper(owner, method, _make_wrapper(operation, is_async))
        _state.patched.append((owner, method))


def instrument(recorder: Recorder) -> None:
    _state.recorder = recorder
    _state.servers.clear()
    if not _state.hook_registered:
        _state.hook_registered = True
        wrapt.register_post_import_hook(_patch, "openai")
    else:
        import sys

        if "openai" in sys.modules:
            _patch(sys.modules["openai"])


def uninstrument() -> None:
    _state.recorder = None
    while _state.patched:
        owner, method = _state.patched.pop()
        unwrap(owner, method)
