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

from .. import names
from ..attribution import current_attribution
from ..guard import QuotaExceededError
from ..recorder import CallHandle, Recorder
from ..safety import internal_error
from .generation_counts import count_generate

LIBRARY = "transformers"
REQUIREMENT = "transformers >= 4.38"
_MODULE = "transformers.generation.utils"

_recorder: Recorder | None = None
_hook_registered = False
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

    def __init__(self, streamer: Any, handle: CallHandle) -> None:
        super().__init__(streamer)
        self._self_handle = handle
        self._self_puts = 0

    def put(self, value: Any) -> Any:
        self._self_puts += 1
        if self._self_puts == 2:
            self._self_handle.mark_first_chunk()
        return self.__wrapped__.put(value)


def _generate(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    recorder = _recorder
    if recorder is None or _in_generate.get() or not is_instrumentation_enabled():
        return wrapped(*args, **kwargs)
    try:
        name, encoder_decoder = _facts(instance)
        attribution = current_attribution()
        if recorder.guard.settings.enabled:
            decision = recorder.decide(name, attribution)
            # a local model cannot be swapped for another here: downgrade rules do not apply
            if decision is not None and decision.action in ("reject", "fail_closed"):
                raise recorder.refuse(decision, names.OPERATION_TEXT_COMPLETION, names.PROVIDER_TRANSFORMERS,
                                      name, SpanKind.INTERNAL, attribution)
        handle = recorder.start(names.OPERATION_TEXT_COMPLETION, names.PROVIDER_TRANSFORMERS, name,
                                SpanKind.INTERNAL, attribution=attribution)
        call_kwargs = kwargs
        streamer = kwargs.get("streamer")
        if streamer is not None:
            handle.record.streaming = True
            call_kwargs = {**kwargs, "streamer": _StreamerTap(streamer, handle)}
        nested = _in_generate.set(True)
        active = handle.activate()
    except QuotaExceededError:
        raise  # the guard refused this call: the one exception of ours the caller is meant to see
    except Exception:
        internal_error("transformers generate start")
        return wrapped(*args, **kwargs)
    try:
        result = wrapped(*args, **call_kwargs)
    except BaseException as exc:
        _in_generate.reset(nested)
        handle.deactivate(active)
        recorder.finish(handle, error=exc)
        raise
    _in_generate.reset(nested)
    handle.deactivate(active)
    try:
        record = handle.record
        record.input_tokens, record.output_tokens = count_generate(instance, encoder_decoder, args, kwargs, result)
        if record.input_tokens is not None or record.output_tokens is not None:
            record.usage_source = names.SOURCE_COUNTED
        record.response_model = record.request_model
    except Exception:
        internal_error("transformers token count")
    recorder.finish(handle)
    return result


def _patch(module: Any) -> None:
    if _recorder is None:
        return
    target = module.GenerationMixin.generate
    if isinstance(target, wrapt.FunctionWrapper):
        return
    wrapt.wrap_function_wrapper(module, "GenerationMixin.generate", _generate)


def instrument(recorder: Recorder) -> None:
    global _recorder, _hook_registered
    _recorder = recorder
    if not _hook_registered:
        _hook_registered = True
        wrapt.register_post_import_hook(_patch, _MODULE)  # runs now if already imported
    else:
        import sys

        module = sys.modules.get(_MODULE)
        if module is not None:
            _patch(module)


def uninstrument() -> None:
    global _recorder
    _recorder = None
    import sys

    module = sys.modules.get(_MODULE)
    if module is not None:
        unwrap(module.GenerationMixin, "generate")
