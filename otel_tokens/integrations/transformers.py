"""HuggingFace transformers: every `GenerationMixin.generate` call (so pipelines and every model).

Patched when `transformers.generation.utils` is imported (post-import hook), so instrumenting
costs no torch import for apps that never use transformers.
"""

from __future__ import annotations

import contextvars
import os
import weakref
from typing import Any

import wrapt
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, unwrap
from opentelemetry.trace import SpanKind

from otel_tokens import names
from otel_tokens.integrations.generation_counts import count_generate, estimate_generate
from otel_tokens.logs import internal_error
from otel_tokens.recording.call import Call
from otel_tokens.recording.recorder import Recorder

LIBRARY = "transformers"
REQUIREMENT = "transformers >= 4.38"
_MODULE = "transformers.generation.utils"


class _Instrumentation:
    """This integration's state while instrumented (one per process: wrapt's import hooks are global)."""

    def __init__(self) -> None:
        self.recorder: Recorder | None = None
        self.hook_registered = False


_state = _Instrumentation()
# Set while a generate runs: nested generates (assistant models, subclasses calling super)
# belong to the outer call and are not recorded again.
_in_generate: contextvars.ContextVar[bool] = contextvars.ContextVar("otel_tokens_in_generate", default=False)


# Per model instance: (model name, is encoder-decoder). transformers config attribute access is
# slow (~1 us each through its __getattribute__) and these never change for a loaded model.
_model_facts: weakref.WeakKeyDictionary[Any, tuple[str, bool]] = weakref.WeakKeyDictionary()


def model_name(instance: Any) -> str:
    """`config.name_or_path`; a local directory path is reduced to its last component."""
    config = getattr(instance, "config", None)
    name = str(getattr(config, "name_or_path", "") or "").rstrip("/\\")
    if name and (os.path.isabs(name) or name.startswith((".", "~"))):
        name = os.path.basename(name)
    return name or str(getattr(config, "model_type", "") or type(instance).__name__)


def _facts(instance: Any) -> tuple[str, bool]:
    try:
        facts = _model_facts.get(instance)
    except TypeError:  # not weak-referenceable or hashable
        facts = None
    if facts is None:
        facts = (model_name(instance), bool(getattr(getattr(instance, "config", None), "is_encoder_decoder", False)))
        try:
            _model_facts[instance] = facts
        except TypeError:
            pass
    return facts


class _StreamerTap(wrapt.ObjectProxy):  # type: ignore[misc]
    """Notes the first generated chunk; generate's first put() is the prompt, the second the first token."""

    def __init__(self, streamer: Any, call: Call) -> None:
        super().__init__(streamer)
        self._self_call = call
        self._self_puts = 0

    def put(self, value: Any) -> Any:
        self._self_puts += 1
        if self._self_puts == 2:
            self._self_call.mark_first_chunk()
        return self.__wrapped__.put(value)


def _generate(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    recorder = _state.recorder
    if recorder is None or _in_generate.get() or not is_instrumentation_enabled():
        return wrapped(*args, **kwargs)
    try:
        name, encoder_decoder = _facts(instance)
    except Exception:
        internal_error("transformers model facts")
        return wrapped(*args, **kwargs)
    # in-process weights cannot be swapped for another model here: downgrade rules do not apply
    call = recorder.begin(names.OPERATION_TEXT_COMPLETION, names.PROVIDER_TRANSFORMERS, name, SpanKind.INTERNAL,
                          downgradable=False, estimate=lambda: estimate_generate(instance, args, kwargs))
    call_kwargs = kwargs
    if call.output_limit is not None:  # fitted to what remains of the budget: it wins over max_length and the config
        call_kwargs = {**kwargs, "max_new_tokens": call.output_limit}
    streamer = kwargs.get("streamer")
    if streamer is not None:
        call.record.streaming = True
        call_kwargs = {**call_kwargs, "streamer": _StreamerTap(streamer, call)}
    nested = _in_generate.set(True)
    try:
        with call:
            result = wrapped(*args, **call_kwargs)
    finally:
        _in_generate.reset(nested)
    try:
        record = call.record
        record.input_tokens, record.output_tokens = count_generate(instance, encoder_decoder, args, kwargs, result)
        if record.input_tokens is not None or record.output_tokens is not None:
            record.usage_source = names.SOURCE_COUNTED
        record.response_model = record.request_model
    except Exception:
        internal_error("transformers token count")
    recorder.finish(call)
    return result


def _patch(module: Any) -> None:
    if _state.recorder is None:
        return
    target = module.GenerationMixin.generate
    if isinstance(target, wrapt.FunctionWrapper):
        return
    wrapt.wrap_function_wrapper(module, "GenerationMixin.generate", _generate)


def instrument(recorder: Recorder) -> None:
    _state.recorder = recorder
    if not _state.hook_registered:
        _state.hook_registered = True
        wrapt.register_post_import_hook(_patch, _MODULE)  # runs now if already imported
    else:
        import sys

        module = sys.modules.get(_MODULE)
        if module is not None:
            _patch(module)


def uninstrument() -> None:
    _state.recorder = None
    import sys

    module = sys.modules.get(_MODULE)
    if module is not None:
        unwrap(module.GenerationMixin, "generate")
