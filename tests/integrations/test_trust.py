"""Who pays, and what leaves the process (issue 17's first part): inbound baggage is untrusted by
default, only our three keys go out and only to internal hosts, label values are valid UTF-8."""

from __future__ import annotations

import contextlib

import openai
import pytest
from opentelemetry import baggage, context

from otel_tokens import names, usage_context
from otel_tokens.attribution.propagation import internal_host
from otel_tokens.config import load_settings
from otel_tokens.config.settings import Settings
from tests.support.openai_server import OpenAIServer
from tests.support.telemetry import instrumented


@pytest.mark.parametrize(("host", "internal"), [
    ("127.0.0.1", True), ("::1", True), ("[::1]", True), ("10.1.2.3", True), ("192.168.0.7", True),
    ("172.20.0.5", True), ("169.254.1.1", True), ("localhost", True), ("vllm", False), ("model-server", False),
    ("qwen.internal", False), ("llm.svc.cluster.local", False), ("api.openai.com", False),
    ("api.deepseek.com", False), ("8.8.8.8", False), ("dashscope.aliyuncs.com", False), (None, False), ("", False)])
def test_the_built_in_internal_hosts(host, internal):
    assert internal_host(host) is internal


def test_configured_globs_replace_the_built_in_set():
    assert internal_host("llm.corp.example", ("*.corp.example",))
    assert internal_host("vllm", ("vllm", "*.svc.cluster.local")) and internal_host("a.svc.cluster.local", ("*.svc*",))
    assert not internal_host("127.0.0.1", ("*.corp.example",))
    assert load_settings({"OTEL_TOKENS_CONFIG": ""}).propagate_hosts == ()
    assert Settings().trust_baggage is False


@pytest.fixture
def app():
    with contextlib.ExitStack() as stack:
        yield lambda **settings: stack.enter_context(instrumented(Settings(**settings)))
def test_forged_baggage_bills_nobody_and_is_never_forwarded(app):
    tel = app()
    forged = baggage.set_baggage(names.USER_ID, "alice", baggage.set_baggage("x-internal-auth", "SECRET123"))
    token = context.attach(baggage.set_baggage(names.DEPARTMENT, "support", forged))
    try:
        with OpenAIServer() as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            with usage_context(user_id="mallory"):  # the app knows who this is: the department stays unset
                client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
            client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
            sent = [r.headers.get("baggage", "") for r in server.requests]
    finally:
        context.detach(token)
    first, second = tel.spans()
    assert first.attributes[names.USER_ID] == "mallory" and first.attributes[names.DEPARTMENT] == names.UNATTRIBUTED
    assert second.attributes[names.USER_ID] == names.UNATTRIBUTED  # not alice
    assert sent == ["user.id=mallory", ""]  # our keys with the app's values; nothing of the client's
    assert all("SECRET123" not in b and "alice" not in b for b in sent)


class _ToLocal:
    """An httpx transport that takes requests meant for a public API host to the local server."""

    def __init__(self, port: int) -> None:
        import httpx

        self.port, self.inner = port, httpx.HTTPTransport()

    def handle_request(self, request):
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self.port)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()
def test_attribution_never_goes_to_a_third_party_host(app):
    import httpx

    tel = app()
    with OpenAIServer() as server:
        internal = openai.OpenAI(base_url=server.base_url.replace("127.0.0.1", "localhost"), api_key="x",
                                 max_retries=0)
        public = openai.OpenAI(base_url="https://api.example-llm.com/v1", api_key="x", max_retries=0,
                               http_client=httpx.Client(transport=_ToLocal(server.port)))  # type: ignore[arg-type]
        with usage_context(user_id="alice", department="sales", session_id="s-1"):
            internal.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
            public.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
        to_internal, to_public = server.requests
    assert set(to_internal.headers["baggage"].split(",")) == {"user.id=alice", "department=sales", "session.id=s-1"}
    assert "baggage" not in to_public.headers and "traceparent" in to_public.headers
    assert [s.attributes[names.SERVER_ADDRESS] for s in tel.spans()] == ["localhost", "api.example-llm.com"]
    assert all(s.attributes[names.USER_ID] == "alice" for s in tel.spans())  # still billed to alice


def test_a_lone_surrogate_in_an_id_is_recorded_as_valid_text(app):
    from tests.support.tiny_models import gpt2

    tel = app()
    import torch

    with usage_context(user_id="mal\ud800lory"):
        gpt2().generate(torch.tensor([[5, 6]]), max_new_tokens=1, do_sample=False)
    user = tel.span().attributes[names.USER_ID]
    assert user == "mal\\ud800lory" and user.encode("utf-8")
    assert {u for (u,) in tel.token_totals(names.USER_ID)} == {"mal\\ud800lory"}
