"""The integration contract: a library wrapper written only against the recorder's lifecycle
(begin / active / finish) gets attribution, refusals, downgrades, the span and the metrics exactly
as the shipped openai and transformers integrations do; and no integration reaches past it."""

from __future__ import annotations

import ast
import pathlib
import threading
from typing import Any

import openai
import pytest
import wrapt
from opentelemetry import trace
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.trace import SpanKind

import otel_tokens.integrations as integrations_package
from otel_tokens import QuotaExceededError, names, usage_context
from otel_tokens.config.settings import AlertSettings, GuardRule, GuardSettings, Settings
from otel_tokens.logs import internal_error
from otel_tokens.ops.alert_endpoint import serve
from otel_tokens.recording.call import UsageEstimate
from otel_tokens.recording.recorder import Recorder
from tests.support.alerts import alert
from tests.support.openai_server import OpenAIServer
from tests.support.telemetry import make_telemetry


class ToyClient:
    """A library nobody instruments yet: one method, usage in its answer."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.parents: list[Any] = []

    def complete(self, model: str, prompt: str, max_tokens: int = 8) -> dict[str, Any]:
        self.sent.append(model)
        self.parents.append(trace.get_current_span())
        if prompt == "boom":
            raise ConnectionError("the toy server is down")
        return {"model": model + "-2026", "usage": {"in": len(prompt.split()), "out": max_tokens}}


class ToyIntegration:
    """The whole integration for ToyClient: only what is specific to it."""

    REQUIREMENT = "toy >= 1"

    def __init__(self) -> None:
        self.recorder: Recorder | None = None
        self.estimates = 0

    def _estimate(self, prompt: str, max_tokens: int) -> UsageEstimate:
        self.estimates += 1
        return UsageEstimate(len(prompt.split()), max_tokens)

    def _complete(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        recorder = self.recorder
        if recorder is None:
            return wrapped(*args, **kwargs)
        call = recorder.begin(names.OPERATION_CHAT, "toy", kwargs["model"], SpanKind.CLIENT,
                              server_address="toy.internal", server_port=1,
                              estimate=lambda: self._estimate(kwargs["prompt"], kwargs.get("max_tokens", 8)))
        with call:
            result = wrapped(*args, **{**kwargs, "model": call.model})
        try:
            record = call.record
            record.response_model = result["model"]
            record.input_tokens, record.output_tokens = result["usage"]["in"], result["usage"]["out"]
            record.usage_source = names.SOURCE_REPORTED
        except Exception:
            internal_error("toy result")
        recorder.finish(call)
        return result

    def instrument(self, recorder: Recorder) -> None:
        self.recorder = recorder
        wrapt.wrap_function_wrapper(ToyClient, "complete", self._complete)

    def uninstrument(self) -> None:
        self.recorder = None
        unwrap(ToyClient, "complete")


RULES = (GuardRule("user", "reject", "critical"),
         GuardRule("user", "downgrade", "warning", (("big-*", "small-model"),)))


@pytest.fixture
def guarded():
    """(guard state, a recorder whose guard follows it, telemetry); the alerts are set by the test."""
    server = serve("127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/state"
    tel, tracer_provider, meter_provider = make_telemetry()
    recorder = Recorder(tracer_provider.get_tracer("t"), meter_provider.get_meter("t"),
                        Settings(guard=GuardSettings(AlertSettings(url, 60.0), rules=RULES), builtin_prices=False))
    state = server.state
    state.update({"alerts": [alert("LLMUserTokenQuota", "critical", user_id="mallory"),
                             alert("LLMUserTokenQuota", "warning", user_id="walt")]})
    recorder.enforcement.alert.refresh()
    yield recorder, tel
    recorder.close()
    server.shutdown()
    server.server_close()
def test_a_toy_integration_gets_attribution_refusal_downgrade_span_and_metrics(guarded):
    recorder, tel = guarded
    toy = ToyIntegration()
    toy.instrument(recorder)
    client = ToyClient()
    try:
        with usage_context(user_id="alice", department="support"):
            assert client.complete(model="big-model", prompt="one two three", max_tokens=5)["usage"]["out"] == 5
        with usage_context(user_id="walt", department="support"):
            client.complete(model="big-model", prompt="hi", max_tokens=2)
        with usage_context(user_id="mallory", department="sales"), pytest.raises(QuotaExceededError) as refused:
            client.complete(model="big-model", prompt="hi")
        with usage_context(user_id="alice"), pytest.raises(ConnectionError, match="toy server is down"):
            client.complete(model="big-model", prompt="boom")
    finally:
        toy.uninstrument()
    assert refused.value.principal == "mallory" and refused.value.http_status == 429
    assert client.sent == ["big-model", "small-model", "big-model"]  # refused before the library ran
    assert toy.estimates == 0  # no budget guard: the estimate is never computed
    served, downgraded, rejected, failed = tel.spans()
    # the span was current inside the library call, and is its own
    assert [p.get_span_context().span_id for p in client.parents] == [
        s.context.span_id for s in (served, downgraded, failed)]
    assert served.name == "chat big-model" and served.kind is SpanKind.CLIENT
    assert {k: served.attributes[k] for k in (names.USER_ID, names.DEPARTMENT, names.GEN_AI_PROVIDER_NAME,
                                              names.GEN_AI_RESPONSE_MODEL, names.GEN_AI_USAGE_INPUT_TOKENS,
                                              names.GEN_AI_USAGE_OUTPUT_TOKENS, names.LLM_USAGE_SOURCE,
                                              names.SERVER_ADDRESS)} == {
        names.USER_ID: "alice", names.DEPARTMENT: "support", names.GEN_AI_PROVIDER_NAME: "toy",
        names.GEN_AI_RESPONSE_MODEL: "big-model-2026", names.GEN_AI_USAGE_INPUT_TOKENS: 3,
        names.GEN_AI_USAGE_OUTPUT_TOKENS: 5, names.LLM_USAGE_SOURCE: names.SOURCE_REPORTED,
        names.SERVER_ADDRESS: "toy.internal"}
    assert downgraded.attributes[names.GEN_AI_REQUEST_MODEL] == "small-model"
    assert downgraded.attributes[names.LLM_QUOTA_ACTION] == "downgrade"
    assert downgraded.attributes[names.LLM_QUOTA_ORIGINAL_MODEL] == "big-model"
    assert rejected.attributes[names.LLM_QUOTA_ACTION] == "reject"
    assert rejected.attributes[names.ERROR_TYPE] == "QuotaExceededError"
    assert failed.attributes[names.ERROR_TYPE] == "ConnectionError"
    assert names.GEN_AI_USAGE_OUTPUT_TOKENS not in failed.attributes
    assert tel.token_totals(names.USER_ID, names.GEN_AI_TOKEN_TYPE) == {
        ("alice", "input"): 3, ("alice", "output"): 5, ("walt", "input"): 1, ("walt", "output"): 2}
    requests = {(p.attributes[names.USER_ID], p.attributes.get(names.ERROR_TYPE)): p.value
                for p in tel.metrics()[names.METRIC_LLM_REQUESTS]}
    # mallory, refused before ever being served, has no series (llm.guard.decisions counts the refusal)
    assert requests == {("alice", None): 1, ("walt", None): 1, ("alice", "ConnectionError"): 1}
    decisions = {p.attributes[names.GUARD_DECISION]: p.value for p in tel.metrics()[names.METRIC_GUARD_DECISIONS]}
    assert decisions == {"reject": 1, "downgrade": 1}


def _refused_span_keys(tel) -> set[str]:
    (span,) = tel.spans()
    return set(span.attributes) - {names.SERVER_ADDRESS, names.SERVER_PORT}
def test_a_refusal_looks_the_same_from_every_integration(guarded, monkeypatch):
    """The toy wrapper, openai and transformers record one refused call identically."""
    import torch

    from otel_tokens.integrations import openai as openai_integration
    from otel_tokens.integrations import transformers as transformers_integration
    from tests.support import tiny_models as tm

    recorder, tel = guarded
    seen = {}

    def refused(name: str, run) -> None:
        tel.spans_exporter.clear()
        with usage_context(user_id="mallory", department="sales"), pytest.raises(QuotaExceededError):
            run()
        seen[name] = _refused_span_keys(tel)

    toy = ToyIntegration()
    toy.instrument(recorder)
    try:
        refused("toy", lambda: ToyClient().complete(model="big-model", prompt="hi"))
    finally:
        toy.uninstrument()
    openai_integration.instrument(recorder)
    try:
        with OpenAIServer() as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            refused("openai", lambda: client.chat.completions.create(
                model="big-model", messages=[{"role": "user", "content": "hi"}]))
            assert server.requests == []
    finally:
        openai_integration.uninstrument()
    transformers_integration.instrument(recorder)
    try:
        refused("transformers", lambda: tm.gpt2().generate(torch.tensor([[5, 6]]), max_new_tokens=2))
    finally:
        transformers_integration.uninstrument()
    assert seen["toy"] == seen["openai"] == seen["transformers"]
    assert {names.LLM_QUOTA_ACTION, names.ERROR_TYPE, names.USER_ID, names.DEPARTMENT} <= seen["toy"]
def test_estimates_are_lazy_and_say_the_worst_case(guarded):
    """What a budget reservation will need: computed only on request, once, from the arguments."""
    import torch

    from otel_tokens.integrations.generation_counts import estimate_generate
    from otel_tokens.integrations.openai_usage import estimate_request
    from tests.support import tiny_models as tm

    recorder, _ = guarded
    asked = []
    call = recorder.begin(names.OPERATION_CHAT, "toy", "m", estimate=lambda: asked.append(1) or UsageEstimate(4, 9))
    assert asked == []
    assert call.estimate() == call.estimate() == UsageEstimate(4, 9) and asked == [1]
    recorder.finish(call)
    chat = {"model": "gpt-4", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 7, "n": 2}
    estimate = estimate_request(names.OPERATION_CHAT, chat)
    assert estimate.input_tokens > 2 and (estimate.max_output_tokens, estimate.choices) == (7, 2)
    assert estimate_request(names.OPERATION_CHAT,
                            {**chat, "max_tokens": None, "max_completion_tokens": 3, "n": True}).choices == 1
    embeddings = estimate_request(names.OPERATION_EMBEDDINGS, {"input": [1, 2, 3]})
    assert embeddings == UsageEstimate(3, 0)
    model = tm.gpt2()
    batch = torch.tensor([[5, 6, 7], [5, 6, 7]])
    returned = {"max_new_tokens": 4, "num_return_sequences": 3}
    assert estimate_generate(model, (batch,), returned) == UsageEstimate(6, 4, 6)
    assert estimate_generate(model, (), {"input_ids": torch.tensor([[5, 6]]), "max_length": 10}) == (
        UsageEstimate(2, 8, 1))
def test_an_internal_failure_at_begin_leaves_the_call_alone(guarded, monkeypatch):
    recorder, tel = guarded
    monkeypatch.setattr(recorder.enforcement.alert, "decide", lambda *a: 1 / 0)
    call = recorder.begin(names.OPERATION_CHAT, "toy", "big-model")
    with call:
        assert not trace.get_current_span().get_span_context().is_valid
    assert call.model == "big-model" and recorder.outgoing_headers(call) == {}
    recorder.finish(call)
    assert tel.spans() == []


def _names_used(tree: ast.AST) -> set[str]:
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            used.add(node.id)
        elif isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.alias):
            used.update(node.name.split("."))
        elif isinstance(node, ast.ImportFrom) and node.module:
            used.update(node.module.split("."))
    return used


def _opentelemetry_imports(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opentelemetry"):
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("opentelemetry"))
    return found


FORBIDDEN = {"guard", "AlertMode", "BudgetMode", "Enforcement", "QuotaExceededError", "QuotaStateUnavailableError",
             "Decision", "set_span_in_context",
             "start_span", "start_as_current_span", "create_counter", "create_histogram", "set_attribute",
             "set_attributes", "get_tracer", "get_meter", "use_span", "get_current_span", "baggage", "propagate"}
# what an integration may take from OpenTelemetry itself: the span kind it names, the patch helpers
ALLOWED_OTEL = {"opentelemetry.trace.SpanKind", "opentelemetry.instrumentation.utils.is_instrumentation_enabled",
                "opentelemetry.instrumentation.utils.unwrap"}


def test_no_integration_reaches_past_the_lifecycle():
    folder = pathlib.Path(integrations_package.__file__).parent
    modules = sorted(folder.glob("*.py"))
    assert len(modules) >= 6
    trees = {p.name: ast.parse(p.read_text()) for p in modules}
    offenders = {name: sorted(_names_used(tree) & FORBIDDEN) for name, tree in trees.items()}
    assert {name: used for name, used in offenders.items() if used} == {}
    imports = {name: sorted(_opentelemetry_imports(tree) - ALLOWED_OTEL) for name, tree in trees.items()}
    assert {name: found for name, found in imports.items() if found} == {}  # no context attach/detach, no meters
    for name, tree in trees.items():
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global)], f"{name} rebinds module globals"
