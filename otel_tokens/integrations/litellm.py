"""litellm (1.110+): `completion`, `acompletion`, `text_completion`, `atext_completion`, `embedding`
and `aembedding`, streamed or not, on every provider route litellm offers.

litellm sends chats through the openai client's low-level `post` (never the patched `create`) or its
own HTTP code, and some embeddings through the patched `create`: so the call is taken at litellm's
public functions, as one covering call (`covers_inner`), and whatever litellm runs inside it is not
recorded a second time. Usage comes from litellm's response objects (`reported`); a block of zeros
is litellm saying the provider reported none, and is counted locally instead.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import wrapt
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind

from otel_tokens import names
from otel_tokens.config.providers import provider_for_host
from otel_tokens.config.settings import Endpoint
from otel_tokens.integrations.openai_endpoints import api_key
from otel_tokens.integrations.openai_request import (
    refused_stream_options,
    stop_asking,
    wants_usage_chunk,
    with_headers,
    with_output_limit,
    with_usage_chunk,
)
from otel_tokens.integrations.openai_stream import AsyncStreamProxy, DualStreamProxy, StreamProxy, StreamState
from otel_tokens.integrations.openai_usage import (
    Usage,
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

LIBRARY = "litellm"
REQUIREMENT = "litellm >= 1.110"

_CHAT, _TEXT, _EMBED = ("model", "messages"), ("prompt", "model"), ("model", "input")
# public function -> (operation, its leading positional parameters, async)
_TARGETS = {
    "completion": (names.OPERATION_CHAT, _CHAT, False),
    "acompletion": (names.OPERATION_CHAT, _CHAT, True),
    "text_completion": (names.OPERATION_TEXT_COMPLETION, _TEXT, False),
    "atext_completion": (names.OPERATION_TEXT_COMPLETION, _TEXT, True),
    "embedding": (names.OPERATION_EMBEDDINGS, _EMBED, False),
    "aembedding": (names.OPERATION_EMBEDDINGS, _EMBED, True),
}

_OPENAI_ROUTES = ("openai", "text-completion-openai")
# where the caller's own call would have gone, and with which credentials: dropped when a downgrade moves it
_ROUTING = ("api_base", "base_url", "api_key", "api_version", "custom_llm_provider", "organization",
            "azure_ad_token", "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "vertex_credentials")
# what litellm answers without calling any provider: nothing to record or charge
_MOCKS = ("mock_response", "mock_tool_calls", "mock_timeout")


class _Instrumentation:
    def __init__(self) -> None:
        self.recorder: Recorder | None = None
        self.patched: list[tuple[Any, str, Any]] = []  # (module, name, original)
        self.hook_registered = False


_state = _Instrumentation()


class _LiteLLMStreamState(StreamState):
    """A stream's usage chunk is litellm's own count when no chunk the provider sent carried usage
    (litellm keeps them in the stream's `chunks`), and none at all when it is zeros: either way the
    stream is counted locally, with the tokenizer configured for the model, instead."""

    __slots__ = ("received",)

    def __init__(self, recorder: Recorder, call: Call, kwargs: Mapping[str, Any], hide: bool, stream: Any) -> None:
        super().__init__(recorder, call, kwargs, hide)
        received = getattr(stream, "chunks", None)
        self.received: list[Any] | None = received if type(received) is list else None

    def finish(self, error: BaseException | None = None) -> None:
        if self.usage is not None and (_blank(self.usage) or not self._provider_reported()):
            self.usage = None
        self.received = None
        super().finish(error)

    def _provider_reported(self) -> bool:
        if self.received is None:  # nothing to tell by (text streams): litellm may have counted it itself
            return False
        try:
            return any(get(chunk, "usage") is not None for chunk in self.received)
        except Exception:
            return True


def _blank(usage: Usage) -> bool:
    return not usage.input and not usage.output


def _route(kwargs: Mapping[str, Any], recorder: Recorder) -> tuple[str, str, str | None, int | None]:
    """(model as the provider sees it, provider name, server address, port) from litellm's own routing."""
    import litellm

    requested = kwargs.get("model")
    requested = requested if isinstance(requested, str) and requested else "unknown"
    api_base = kwargs.get("api_base") or kwargs.get("base_url")
    model, provider = requested, None
    try:
        model, provider, _, found_base = litellm.get_llm_provider(
            model=requested, custom_llm_provider=kwargs.get("custom_llm_provider"),
            api_base=api_base if isinstance(api_base, str) else None)
        api_base = api_base or found_base
    except Exception:  # litellm raises for a model it cannot route; the call itself will say why
        pass
    if not api_base:  # set in litellm's configuration rather than in the call
        api_base = getattr(litellm, "api_base", None)
        if not api_base and provider in _OPENAI_ROUTES:
            api_base = os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE") \
                or "https://api.openai.com/v1"
    host, port = None, None
    if isinstance(api_base, str) and api_base:
        try:
            parts = urlsplit(api_base)
            host, port = parts.hostname or None, parts.port or {"https": 443, "http": 80}.get(parts.scheme)
        except ValueError:
            pass
    name = provider_for_host(recorder.settings.providers, host, port,
                             names.LITELLM_PROVIDERS.get(provider or "", provider or recorder.settings.provider_name))
    return (model if isinstance(model, str) and model else requested), name, host, port


def _route_to(operation: str, model: str) -> str:
    """litellm's route for an OpenAI-compatible server (its docs: `openai/<model>` with `api_base`)."""
    return f"text-completion-openai/{model}" if operation == names.OPERATION_TEXT_COMPLETION else f"openai/{model}"


def _with_model(view: Mapping[str, Any], sent: str, chosen: str) -> str:
    """The model argument calling `chosen` (the guard's downgrade) on the route the caller named."""
    requested = view.get("model")
    if isinstance(requested, str) and requested.endswith("/" + sent):
        return requested[: -len(sent)] + chosen
    return chosen


class _Request:
    """One call's arguments: `view` to read (positional ones named), `args`/`kwargs` to send."""

    __slots__ = ("args", "hide", "kwargs", "original", "view")

    def __init__(self, order: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args, self.kwargs, self.original, self.hide = args, kwargs, kwargs, False
        self.view = {**dict(zip(order, args, strict=False)), **kwargs} if args else kwargs

    def set_model(self, order: tuple[str, ...], model: str) -> None:
        position = order.index("model")
        if "model" not in self.kwargs and position < len(self.args):
            self.args = (*self.args[:position], model, *self.args[position + 1:])
        else:
            self.kwargs = {**self.kwargs, "model": model}
        self.view = {**self.view, "model": model}

    def move(self, order: tuple[str, ...], endpoint: Endpoint, model: str) -> None:
        """Sent to `endpoint` instead, with its own key: the caller's key, base and provider route are not."""
        self.set_model(order, model)  # the routing arguments are keywords only (`order` is model and the input)
        kept = {k: v for k, v in self.kwargs.items() if k not in _ROUTING}
        self.kwargs = {**kept, "api_base": endpoint.base_url, "api_key": api_key(endpoint)}
        self.view = {**dict(zip(order, self.args, strict=False)), **self.kwargs}

    def set_output_limit(self, order: tuple[str, ...], limit: int) -> None:
        """`fit`: every output limit sent lowered to `limit`, positional ones included."""
        positional = False
        for key in ("max_tokens", "max_completion_tokens"):
            position = order.index(key) if key in order else len(self.args)
            if key not in self.kwargs and position < len(self.args) and self.args[position] is not None:
                self.args, positional = (*self.args[:position], limit, *self.args[position + 1:]), True
        self.kwargs = with_output_limit(self.kwargs, limit, add_missing=not positional)
        self.view = {**dict(zip(order, self.args, strict=False)), **self.kwargs}


def _make_wrapper(operation: str, order: tuple[str, ...], is_async: bool) -> Any:
    def begin(args: Any, kwargs: dict[str, Any], recorder: Recorder) -> tuple[Call, _Request]:
        """The call begun (the guard's refusal passes through) and what to send."""
        request = _Request(order, tuple(args), kwargs)
        view = request.view
        try:
            model, provider, address, port = _route(view, recorder)
        except Exception:
            internal_error("litellm route")
            model, provider, address, port = str(view.get("model")), recorder.settings.provider_name, None, None
        streaming = view.get("stream") is True
        call = recorder.begin(operation, provider, model, SpanKind.CLIENT, server_address=address, server_port=port,
                              streaming=streaming, estimate=lambda: estimate_request(operation, view, recorder.tokens),
                              covers_inner=True)
        if not call.live:
            return call, request
        try:
            if call.endpoint is not None:  # a downgrade to another server: its OpenAI-compatible route
                request.move(order, call.endpoint, _route_to(operation, call.model))
            elif call.model != model:
                request.set_model(order, _with_model(view, model, call.model))
            if call.output_limit is not None:  # fitted to what remains of the budget
                request.set_output_limit(order, call.output_limit)
            headers = recorder.outgoing_headers(call)
            given = view.get("headers")
            if headers and isinstance(given, Mapping):  # litellm's `headers=` too: the caller's own win
                taken = {str(k).lower() for k in given}
                headers = {k: v for k, v in headers.items() if k.lower() not in taken}
            request.kwargs = with_headers(request.kwargs, headers)
            request.original = request.kwargs  # what is sent again, as written, if the usage chunk is refused
            # a text stream's request is sent on its first chunk, after a refusal could be retried: not asked
            if (streaming and recorder.settings.stream_include_usage and operation == names.OPERATION_CHAT
                    and wants_usage_chunk(call)):
                request.kwargs, request.hide = with_usage_chunk(request.kwargs)
        except Exception:
            internal_error("litellm request options")
        return call, request

    def retry_as_written(call: Call, request: _Request, error: Exception) -> bool:
        """A server that refused the stream_options we added is sent the call as the caller wrote it."""
        if not (request.hide and refused_stream_options(error)):
            return False
        stop_asking(call)
        request.kwargs, request.hide = request.original, False
        return True

    def done(result: Any, call: Call, request: _Request, recorder: Recorder) -> Any:
        try:
            if not call.live:
                return result
            return _take_result(result, call, request, recorder, operation)
        except Exception:
            internal_error("litellm result")
            recorder.finish(call)
            return result

    def passes_through(recorder: Recorder | None, kwargs: Mapping[str, Any]) -> bool:
        return recorder is None or not is_instrumentation_enabled() or any(kwargs.get(k) for k in _MOCKS)

    async def deferred(awaitable: Any, call: Call, request: _Request, recorder: Recorder) -> Any:
        """`completion(..., acompletion=True)`, `embedding(..., aembedding=True)`: the call runs when awaited."""
        with call:
            result = await awaitable
        return done(result, call, request, recorder)

    if is_async:
        async def async_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            recorder = _state.recorder
            if passes_through(recorder, kwargs):
                return await wrapped(*args, **kwargs)
            assert recorder is not None
            call, request = begin(args, kwargs, recorder)
            with call:
                try:
                    result, retry = await wrapped(*request.args, **request.kwargs), False
                except Exception as error:
                    if not retry_as_written(call, request, error):
                        raise
                    retry = True
                if retry:  # outside the except: the caller's traceback carries none of our first try
                    result = await wrapped(*request.args, **request.kwargs)
            return done(result, call, request, recorder)

        return async_wrapper

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        recorder = _state.recorder
        if passes_through(recorder, kwargs):
            return wrapped(*args, **kwargs)
        assert recorder is not None
        call, request = begin(args, kwargs, recorder)
        with call:
            try:
                result, retry = wrapped(*request.args, **request.kwargs), False
            except Exception as error:
                if not retry_as_written(call, request, error):
                    raise
                retry = True
            if retry:
                result = wrapped(*request.args, **request.kwargs)
        if call.live and inspect.iscoroutine(result):
            return deferred(result, call, request, recorder)
        return done(result, call, request, recorder)

    return wrapper


def _take_result(result: Any, call: Call, request: _Request, recorder: Recorder, operation: str) -> Any:
    kwargs = request.view
    if call.record.streaming and (hasattr(result, "__next__") or hasattr(result, "__anext__")):
        state = _LiteLLMStreamState(recorder, call, kwargs, request.hide, result)
        if hasattr(result, "__next__") and hasattr(result, "__anext__"):
            return DualStreamProxy(result, state)  # litellm's streams may be read either way
        return StreamProxy(result, state) if hasattr(result, "__next__") else AsyncStreamProxy(result, state)
    if inspect.isawaitable(result):  # not a response litellm documents: leave it unrecorded, never broken
        recorder.finish(call)
        return result
    record = call.record
    model = get(result, "model")
    if isinstance(model, str) and model:
        record.response_model = model
    usage = find_usage(result)
    if usage is not None and not _blank(usage):
        apply_usage(record, usage, embeddings=operation == names.OPERATION_EMBEDDINGS)
    else:
        count_locally(record, recorder.tokens, kwargs, response_texts(operation, result), response_ending(result))
    recorder.finish(call)
    return result


def _patch(module: Any) -> None:
    if _state.recorder is None or _state.patched:
        return
    for name, (operation, order, is_async) in _TARGETS.items():
        original = getattr(module, name, None)
        if original is None or isinstance(original, wrapt.FunctionWrapper):
            continue
        wrapped = wrapt.FunctionWrapper(original, _make_wrapper(operation, order, is_async))
        # the public name, and the module that defines it (litellm's own modules call it from there)
        home = sys.modules.get(getattr(original, "__module__", "") or "")
        for owner in {id(m): m for m in (module, home) if m is not None}.values():
            if getattr(owner, name, None) is original:
                setattr(owner, name, wrapped)
                _state.patched.append((owner, name, original))


def instrument(recorder: Recorder) -> None:
    _state.recorder = recorder
    if not _state.hook_registered:
        _state.hook_registered = True
        wrapt.register_post_import_hook(_patch, "litellm")
    elif "litellm" in sys.modules:
        _patch(sys.modules["litellm"])


def uninstrument() -> None:
    _state.recorder = None
    while _state.patched:
        owner, name, original = _state.patched.pop()
        setattr(owner, name, original)
