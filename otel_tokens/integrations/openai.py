"""The `openai` SDK (1.26 to 3.x) and everything built on it (LangChain's ChatOpenAI,
Langchain-Chatchat against vLLM, Xinference, Ollama, FastChat...).

Wraps `create` (and `parse`) of chat completions, completions, embeddings and responses, sync and
async; `with_raw_response` and `.stream()` helpers go through these too. Streams are returned
behind a proxy (openai_stream.py); usage comes from the server or is counted (openai_usage.py).
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Mapping
from typing import Any

import wrapt
from opentelemetry import baggage, propagate
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, unwrap
from opentelemetry.trace import SpanKind

from .. import names
from ..attribution import current_attribution
from ..guard import QuotaExceededError
from ..recorder import CallHandle, Recorder
from ..safety import internal_error
from .openai_content import capture_request, capture_response
from .openai_stream import AsyncStreamProxy, StreamProxy, StreamState
from .openai_usage import apply_usage, count_locally, find_usage, get, response_texts

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

_recorder: Recorder | None = None
_patched: list[tuple[Any, str]] = []
_hook_registered = False
_servers: dict[str, tuple[str | None, int | None, str]] = {}
_stream_types: tuple[type, ...] = ()
_async_stream_types: tuple[type, ...] = ()
_raw_types: tuple[type, ...] = ()


def _server(instance: Any, recorder: Recorder) -> tuple[str | None, int | None, str]:
    """(server.address, server.port, provider name) of the client behind a resource."""
    client = getattr(instance, "_client", None)
    url = getattr(client, "_base_url", None) or getattr(client, "base_url", None)
    key = str(url)
    found = _servers.get(key)
    if found is None:
        host = getattr(url, "host", None) or None
        port = getattr(url, "port", None)
        if port is None:
            port = {"https": 443, "http": 80}.get(getattr(url, "scheme", ""), None)
        settings = recorder.settings
        provider = settings.provider_name
        for pattern, name in settings.providers.items():
            if host and (fnmatch.fnmatch(host, pattern) or fnmatch.fnmatch(f"{host}:{port}", pattern)):
                provider = name
                break
        found = _servers[key] = (host, port, provider)
    return found


_fast_propagation: tuple[Any, bool] = (None, False)  # (global propagator seen, is it the W3C default)
_baggage_headers: dict[tuple[Any, ...], str] = {}


def _is_w3c_default(propagator: Any) -> bool:
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    inner = getattr(propagator, "_propagators", None)
    kinds = sorted(type(p).__name__ for p in inner) if isinstance(inner, list) else []
    return kinds == sorted([TraceContextTextMapPropagator.__name__, W3CBaggagePropagator.__name__])


def _w3c_headers(handle: CallHandle) -> dict[str, str]:
    """traceparent + baggage as the default W3C propagators would write them, without their cost
    (~10 us): the baggage header is the same for every call of a user, so it is cached."""
    headers = {}
    span_context = handle.span.get_span_context()
    if span_context.is_valid:
        headers["traceparent"] = (f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
                                  f"{int(span_context.trace_flags):02x}")
        if span_context.trace_state:
            headers["tracestate"] = span_context.trace_state.to_header()
    existing = baggage.get_all()
    attribution = handle.attribution
    key = (tuple(existing.items()), *(attribution.get(k) for k in names.BAGGAGE_KEYS))
    encoded = _baggage_headers.get(key)
    if encoded is None:
        carrier: dict[str, str] = {}
        ctx = otel_context.Context()
        for name, value in existing.items():
            ctx = baggage.set_baggage(name, value, ctx)
        for name in names.BAGGAGE_KEYS:
            value = attribution.get(name)
            if value is not None and name not in existing:
                ctx = baggage.set_baggage(name, value, ctx)
        from opentelemetry.baggage.propagation import W3CBaggagePropagator

        W3CBaggagePropagator().inject(carrier, context=ctx)
        encoded = carrier.get("baggage", "")
        if len(_baggage_headers) > 10_000:
            _baggage_headers.clear()
        _baggage_headers[key] = encoded
    if encoded:
        headers["baggage"] = encoded
    return headers


def _propagated_headers(handle: CallHandle) -> dict[str, str]:
    global _fast_propagation
    propagator = propagate.get_global_textmap()
    seen, fast = _fast_propagation
    if propagator is not seen:
        fast = _is_w3c_default(propagator)
        _fast_propagation = (propagator, fast)
    if fast:
        return _w3c_headers(handle)
    ctx = otel_context.get_current()
    for key in names.BAGGAGE_KEYS:
        value = handle.attribution.get(key)
        if value is not None and baggage.get_baggage(key, ctx) is None:
            ctx = baggage.set_baggage(key, value, ctx)
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return carrier


def _outgoing_headers(kwargs: dict[str, Any], handle: CallHandle) -> dict[str, Any]:
    """kwargs with traceparent + baggage (user.id, department, session.id) in extra_headers, so an
    instrumented model server joins the trace and attributes its own counts to the same user.
    Headers the caller set win."""
    carrier = _propagated_headers(handle)
    if not carrier:
        return kwargs
    user_headers = kwargs.get("extra_headers")
    if isinstance(user_headers, Mapping):
        given = {k.lower() for k in user_headers}
        carrier = {k: v for k, v in carrier.items() if k.lower() not in given}
        merged = {**carrier, **user_headers}
    else:
        merged = carrier
    return {**kwargs, "extra_headers": merged}


def _with_usage_chunk(kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Ask for the usage chunk when the caller did not; True when the chunk must be hidden."""
    options = kwargs.get("stream_options")
    if isinstance(options, Mapping) and options.get("include_usage") is not None:
        return kwargs, False
    merged = {**options, "include_usage": True} if isinstance(options, Mapping) else {"include_usage": True}
    return {**kwargs, "stream_options": merged}, True


def _make_wrapper(operation: str, is_async: bool) -> Any:
    def start(instance: Any, kwargs: dict[str, Any], recorder: Recorder
              ) -> tuple[CallHandle, dict[str, Any], bool, object]:
        model = kwargs.get("model")
        model = model if isinstance(model, str) and model else "unknown"
        address, port, provider = _server(instance, recorder)
        streaming = kwargs.get("stream") is True
        attribution = current_attribution()
        decision = recorder.decide(model, attribution) if recorder.guard.settings.enabled else None
        original = None
        if decision is not None and decision.action in ("reject", "fail_closed"):
            raise recorder.refuse(decision, operation, provider, model, SpanKind.CLIENT, attribution)
        if decision is not None and decision.action == "downgrade":
            original, model = model, decision.model
            kwargs = {**kwargs, "model": model}
        handle = recorder.start(operation, provider, model, SpanKind.CLIENT, address, port, streaming, attribution)
        if decision is not None:
            handle.record.quota_action, handle.record.original_model = decision.action, original
        if recorder.settings.capture_content:
            try:
                capture_request(handle.record, kwargs)
            except Exception:
                internal_error("openai request content")
        call_kwargs, hide = kwargs, False
        if streaming and recorder.settings.stream_include_usage and ("messages" in kwargs or "prompt" in kwargs):
            call_kwargs, hide = _with_usage_chunk(kwargs)
        active = handle.activate()
        if recorder.settings.propagate:
            try:
                call_kwargs = _outgoing_headers(call_kwargs, handle)
            except Exception:  # a broken propagator costs the trace link, never the span or the call
                internal_error("openai propagation")
        return handle, call_kwargs, hide, active

    def done(result: Any, handle: CallHandle, kwargs: dict[str, Any], hide: bool, recorder: Recorder) -> Any:
        try:
            return _take_result(result, handle, kwargs, hide, recorder, operation)
        except Exception:
            internal_error("openai result")
            recorder.finish(handle)
            return result

    if is_async:
        async def async_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            recorder = _recorder
            if recorder is None or not is_instrumentation_enabled():
                return await wrapped(*args, **kwargs)
            try:
                handle, call_kwargs, hide, active = start(instance, kwargs, recorder)
            except QuotaExceededError:
                raise  # the guard refused this call: the one exception of ours the caller is meant to see
            except Exception:
                internal_error("openai start")
                return await wrapped(*args, **kwargs)
            try:
                result = await wrapped(*args, **call_kwargs)
            except BaseException as exc:
                handle.deactivate(active)
                recorder.finish(handle, error=exc)
                raise
            handle.deactivate(active)
            return done(result, handle, kwargs, hide, recorder)

        return async_wrapper

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        recorder = _recorder
        if recorder is None or not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        try:
            handle, call_kwargs, hide, active = start(instance, kwargs, recorder)
        except QuotaExceededError:
            raise  # the guard refused this call: the one exception of ours the caller is meant to see
        except Exception:
            internal_error("openai start")
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **call_kwargs)
        except BaseException as exc:
            handle.deactivate(active)
            recorder.finish(handle, error=exc)
            raise
        handle.deactivate(active)
        return done(result, handle, kwargs, hide, recorder)

    return wrapper


def _load_types() -> None:
    """The SDK's stream and raw-response classes (present in 1.x and 3.x), for cheap type checks."""
    global _stream_types, _async_stream_types, _raw_types
    import openai

    _stream_types = (openai.Stream,)
    _async_stream_types = (openai.AsyncStream,)
    raw = []
    for module_name, class_names in (("openai._legacy_response", ("LegacyAPIResponse",)),
                                     ("openai._response", ("APIResponse", "AsyncAPIResponse"))):
        try:
            module = __import__(module_name, fromlist=["_"])
        except ImportError:
            continue
        raw.extend(getattr(module, name) for name in class_names if hasattr(module, name))
    _raw_types = tuple(raw)


def _take_result(result: Any, handle: CallHandle, kwargs: dict[str, Any], hide: bool, recorder: Recorder,
                 operation: str) -> Any:
    if isinstance(result, _stream_types):
        return StreamProxy(result, StreamState(recorder, recorder.tokens, handle, kwargs, hide))
    if isinstance(result, _async_stream_types):
        return AsyncStreamProxy(result, StreamState(recorder, recorder.tokens, handle, kwargs, hide))
    if isinstance(result, _raw_types):
        return _raw_response(result, handle, kwargs, hide, recorder, operation)
    _record_response(result, handle, kwargs, recorder, operation)
    recorder.finish(handle)
    return result


def _record_response(response: Any, handle: CallHandle, kwargs: Mapping[str, Any], recorder: Recorder,
                     operation: str) -> None:
    record = handle.record
    model = get(response, "model")
    if isinstance(model, str) and model:
        record.response_model = model
    usage = find_usage(response)
    if usage is not None:
        apply_usage(record, usage, embeddings=operation == names.OPERATION_EMBEDDINGS)
    else:
        count_locally(record, recorder.tokens, kwargs, response_texts(operation, response))
    if recorder.settings.capture_content:
        try:
            capture_response(record, response)
        except Exception:
            internal_error("openai response content")


def _raw_response(raw: Any, handle: CallHandle, kwargs: dict[str, Any], hide: bool, recorder: Recorder,
                  operation: str) -> Any:
    """`with_raw_response` / `with_streaming_response`: usage is taken when the caller parses; a
    response never parsed is recorded without usage when it is garbage collected."""
    import weakref

    original = raw.parse
    finished = weakref.finalize(raw, recorder.finish, handle)
    parsed: list[Any] = []

    def take(value: Any) -> Any:
        if parsed:
            return parsed[0]
        finished.detach()
        parsed.append(_take_result(value, handle, kwargs, hide, recorder, operation))
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
        recorder.finish(handle)
        return raw
    if kwargs.get("stream") is not True and type(raw).__name__ == "LegacyAPIResponse":
        raw.parse()  # body already read; parsed once and cached by the SDK, so the caller's parse() is free
    return raw


def _patch(module: Any) -> None:
    if _recorder is None or _patched:
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
        _patched.append((owner, method))


def instrument(recorder: Recorder) -> None:
    global _recorder, _hook_registered
    _recorder = recorder
    _servers.clear()
    if not _hook_registered:
        _hook_registered = True
        wrapt.register_post_import_hook(_patch, "openai")
    else:
        import sys

        if "openai" in sys.modules:
            _patch(sys.modules["openai"])


def uninstrument() -> None:
    global _recorder
    _recorder = None
    while _patched:
        owner, method = _patched.pop()
        unwrap(owner, method)
