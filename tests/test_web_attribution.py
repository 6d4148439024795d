"""Who pays for a web request: the user an authenticating proxy vouched for (trusted headers), or the
app's own `identify`; never what the client claimed (issue 17). In process through the ASGI and WSGI
middleware, and zero-code: a real FastAPI app under `opentelemetry-instrument uvicorn`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from otel_tokens import names, usage_context
from otel_tokens.config import load_settings
from otel_tokens.web import UsageContextMiddleware, UsageContextWSGIMiddleware
from tests.support import tiny_models as tm
from tests.support.openai_server import OpenAIServer
from tests.support.prometheus_stack import free_port, wait_http
from tests.support.tiny_models import forcing

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HEADERS = {"user.id": "X-Forwarded-User", "department": "X-Forwarded-Groups"}


def _generate() -> None:
    tm.gpt2().generate(torch.tensor([[5]]), max_new_tokens=1, logits_processor=forcing(1, [11]))


def _asgi(app, headers: list[tuple[bytes, bytes]]) -> None:
    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        pass

    asyncio.run(app({"type": "http", "headers": headers, "path": "/"}, receive, send))


async def _endpoint(scope, receive, send):
    _generate()


def _charged(telemetry) -> list[tuple[str, str]]:
    return [(s.attributes[names.USER_ID], s.attributes[names.DEPARTMENT]) for s in telemetry.spans()]


U = names.UNATTRIBUTED


@pytest.mark.parametrize(("headers", "charged"), [
    ([(b"x-forwarded-user", b"alice"), (b"x-forwarded-groups", b"sales")], ("alice", "sales")),
    ([(b"X-Forwarded-User", b" alice ")], ("alice", U)),  # names are case-insensitive, values trimmed
    # a client's copy beside the proxy's: ambiguous, so nobody's
    ([(b"x-forwarded-user", b"mallory"), (b"x-forwarded-user", b"alice")], (U, U)),
    ([(b"x-forwarded-user", b"a" * 300)], (U, U)),  # longer than any id: a flood, not a user
    ([(b"x-forwarded-user", b"")], (U, U)),
    ([(b"x-forwarded-user", b"__other__")], ("\\__other__", U)),  # no one poses as our principals
    ([(b"x-forwarded-user", b"__unattributed__")], ("\\__unattributed__", U)),
    ([(b"x-forwarded-user", b"mal\xffory")], (U, U)),  # not UTF-8: nobody's id, not one per server
    ([(b"baggage", b"user.id=alice"), (b"x-user", b"alice")], (U, U)),  # only the named headers count
])
def test_the_asgi_middleware_charges_the_proxy_s_user(telemetry, headers, charged):
    _asgi(UsageContextMiddleware(_endpoint, headers=HEADERS), headers)
    assert _charged(telemetry) == [charged]


def test_identify_and_the_app_s_own_context_win(telemetry):
    async def endpoint(scope, receive, send):
        _generate()
        with usage_context(user_id="batch", department="ops"):
            _generate()

    app = UsageContextMiddleware(endpoint, headers=HEADERS,
                                 identify=lambda scope: {"user_id": "verified-bob"})
    _asgi(app, [(b"x-forwarded-user", b"alice"), (b"x-forwarded-groups", b"sales")])
    assert _charged(telemetry) == [("verified-bob", "sales"), ("batch", "ops")]


def test_a_middleware_without_a_source_is_a_startup_error(monkeypatch):
    monkeypatch.delenv("OTEL_TOKENS_TRUSTED_HEADERS", raising=False)
    monkeypatch.delenv("OTEL_TOKENS_CONFIG", raising=False)
    with pytest.raises(ValueError, match=r"identify=.*headers=.*OTEL_TOKENS_TRUSTED_HEADERS"):
        UsageContextMiddleware(_endpoint)
    with pytest.raises(ValueError, match=r"maps 'user', not one of user\.id"):
        UsageContextMiddleware(_endpoint, headers={"user": "X-Forwarded-User"})
    monkeypatch.setenv("OTEL_TOKENS_TRUSTED_HEADERS", "user.id=X-Auth-Request-Email")
    assert UsageContextMiddleware(_endpoint)._headers.mapping == {"user.id": "x-auth-request-email"}


def test_the_wsgi_middleware_holds_the_user_while_the_body_streams(telemetry):
    """A streamed body runs its LLM calls while the server iterates it, after the app returned."""
    def app(environ, start_response):
        start_response("200 OK", [])
        _generate()

        def body():
            _generate()
            yield b"a"
            _generate()
            yield b"b"
        return body()

    wsgi = UsageContextWSGIMiddleware(app, headers=HEADERS)
    body = wsgi({"HTTP_X_FORWARDED_USER": "carol", "HTTP_X_FORWARDED_GROUPS": "research"}, lambda *a: None)
    _generate()  # between the app's return and the iteration: not carol's
    assert b"".join(body) == b"ab"
    body.close()
    assert _charged(telemetry) == [("carol", "research"), (U, U), ("carol", "research"), ("carol", "research")]


@pytest.mark.parametrize(("raw", "error"), [
    ("user.id", "attribute=Header pairs"), ("user=X-User", "not one of user.id"),
    ("user.id=X User", "not an HTTP header name"), ("user.id=X-A,department=x-a", "same header")])
def test_bad_trusted_headers_name_the_variable_and_value(raw, error):
    settings = load_settings({"OTEL_TOKENS_TRUSTED_HEADERS": raw})
    assert settings.trusted_headers == {}
    assert any("OTEL_TOKENS_TRUSTED_HEADERS" in e and repr(raw) in e and error in e for e in settings.errors)
    bad = load_settings({"OTEL_TOKENS_UNATTRIBUTED": "deny"})
    assert bad.unattributed == "reject" and "is not allow or reject" in bad.errors[0]


# --- zero code: FastAPI under opentelemetry-instrument uvicorn --------------------------------------
def _tokens(metrics_url: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    out: dict[tuple[str, str], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == names.PROM_LLM_TOKEN_USAGE:
                out[sample.labels["user_id"], sample.labels["department"]] += sample.value
    return dict(out)


@pytest.fixture(scope="module")
def web_app():
    with OpenAIServer() as model:
        port, metrics_port = free_port(), free_port()
        env = {**os.environ, "MODEL_URL": model.base_url, "OTEL_SERVICE_NAME": "web-app",
               "OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "prometheus",
               "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1", "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port),
               "OTEL_TOKENS_TRUSTED_HEADERS": "user.id=X-Forwarded-User,department=X-Forwarded-Groups",
               "OTEL_TOKENS_TRUSTED_PROXIES": "127.0.0.1",  # the proxy; 127.0.0.2 below is a client on its own
               "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "openai_v2"}
        process = subprocess.Popen([str(BIN / "opentelemetry-instrument"), str(BIN / "uvicorn"),
                                    "tests.support.web_app:app", "--host", "127.0.0.1", "--port", str(port),
                                    "--no-access-log"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/docs")
            yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", model
        finally:
            process.terminate()
            output = process.communicate(timeout=30)[0]
            if os.environ.get("OTEL_TOKENS_TEST_VERBOSE"):
                print(output)


def _post(url: str, headers: list[tuple[str, str]]) -> int:
    request = urllib.request.Request(url, data=b"{}", method="POST")
    for name, value in headers:
        request.add_header(name, value)
    return urllib.request.urlopen(request, timeout=30).status


@pytest.mark.e2e
def test_zero_code_fastapi_charges_the_proxy_s_user_never_the_client_s_baggage(web_app):
    """Under the agent, OTel's FastAPI instrumentation extracts the client's baggage; our mapping of the
    proxy's headers decides who pays, and only our three keys with those values go to the model server."""
    base, metrics, model = web_app
    forged = "user.id=mallory,department=support,x-internal-auth=SECRET123"
    before = len(model.requests)
    assert _post(f"{base}/chat", [("X-Forwarded-User", "alice"), ("X-Forwarded-Groups", "sales"),
                                  ("baggage", forged)]) == 200
    assert _post(f"{base}/chat", [("baggage", forged)]) == 200  # no proxy header: nobody's, not mallory's
    assert _post(f"{base}/chat-as-app", [("X-Forwarded-User", "alice"), ("baggage", forged)]) == 200
    # a client reaching the app directly, not through the proxy: its X-Forwarded-User bills nobody
    import http.client

    direct = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=30,
                                        source_address=("127.0.0.2", 0))
    direct.request("POST", "/chat", body=b"{}", headers={"X-Forwarded-User": "alice"})
    assert direct.getresponse().status == 200
    direct.close()
    sent = [r.headers.get("baggage", "") for r in model.requests[before:]]
    usage = _tokens(metrics)
    per_call = next(iter(usage.values())) if usage else 0
    assert per_call > 0
    assert usage == {("alice", "sales"): per_call, (U, U): 2 * per_call,
                     ("service-account", "platform"): per_call}
    assert sent == ["user.id=alice,department=sales", "", "user.id=service-account,department=platform", ""]
    assert all("SECRET123" not in b and "mallory" not in b for b in sent)


def test_a_list_in_a_trusted_header_is_nobody_s_id(telemetry):
    """WSGI servers join a client's copy and the proxy's with a comma; so do some gateways under ASGI."""
    app = UsageContextWSGIMiddleware(lambda environ, start_response: [_generate()] and [b"x"], headers=HEADERS)
    assert app({"HTTP_X_FORWARDED_USER": "mallory,alice"}, lambda *a: None) == [b"x"]  # a list body passes as is
    _asgi(UsageContextMiddleware(_endpoint, headers=HEADERS), [(b"x-forwarded-user", b"mallory, alice")])
    assert _charged(telemetry) == [(U, U), (U, U)]


def test_odd_identify_returns_and_malformed_scopes_never_reach_the_app(telemetry):
    for identify in (lambda scope: "alice", lambda scope: ["alice"], lambda scope: {"user_id": object()},
                     lambda scope: {"user_id": b"alice"}, lambda scope: {"user_id": "x" * 300}):
        _asgi(UsageContextMiddleware(_endpoint, identify=identify), [])
    app = UsageContextMiddleware(_endpoint, headers=HEADERS)
    _asgi(app, [(b"x-forwarded-user", None)])  # not what a server sends: attribution lost, request served
    _asgi(app, [(b"x-forwarded-user", b"a", b"b")])
    assert _charged(telemetry) == [(U, U)] * 7
    with pytest.raises(LookupError):  # identify is the app's code: its exceptions are the app's
        _asgi(UsageContextMiddleware(_endpoint, identify=lambda scope: {}[1]), [])


@pytest.mark.parametrize("header", ["Authorization", "cookie", "Host", "baggage", "traceparent"])
def test_client_set_and_credential_headers_are_refused_as_trusted(header):
    settings = load_settings({"OTEL_TOKENS_TRUSTED_HEADERS": f"user.id={header}"})
    assert settings.trusted_headers == {} and "credentials" in settings.errors[0]
    assert "maps one attribute twice" in load_settings(
        {"OTEL_TOKENS_TRUSTED_HEADERS": "user.id=X-A,user.id=X-B"}).errors[0]


def test_an_unreadable_unattributed_policy_means_reject():
    settings = load_settings({"OTEL_TOKENS_UNATTRIBUTED": "alow"})
    assert settings.unattributed == "reject" and "refusing calls with no user" in settings.errors[0]


# --- who may name a user, and in which spelling -----------------------------------------------------------
def _asgi_from(app, client: tuple[str, int] | None, headers: list[tuple[bytes, bytes]]) -> None:
    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        pass

    asyncio.run(app({"type": "http", "headers": headers, "path": "/", "client": client}, receive, send))


def test_trusted_headers_count_only_from_the_trusted_proxies(telemetry, caplog):
    """A client reaching the app directly sent `X-Forwarded-User: alice` and was billed as alice."""
    from otel_tokens import logs as safety

    safety._reported.discard("untrusted-peer")  # said once per process, for the first such peer
    proxied = [(b"x-forwarded-user", b"alice"), (b"x-forwarded-groups", b"sales")]
    app = UsageContextMiddleware(_endpoint, headers=HEADERS, proxies=["10.0.0.5", "10.1.0.0/16", "unix"])
    _asgi_from(app, ("10.0.0.5", 40000), proxied)  # the proxy
    _asgi_from(app, ("10.1.2.3", 40000), proxied)  # one of the proxy's pool
    _asgi_from(app, None, proxied)  # the proxy over a Unix socket
    _asgi_from(app, ("203.0.113.9", 40000), proxied)  # a client reaching the app directly
    assert _charged(telemetry) == [("alice", "sales")] * 3 + [(U, U)]
    assert "203.0.113.9, which is not in trusted_proxies" in caplog.text

    wsgi = UsageContextWSGIMiddleware(lambda environ, start: [_generate()] and [b""], headers=HEADERS,
                                      proxies=["10.0.0.5"])
    for peer in ("10.0.0.5", "10.0.0.6"):
        list(wsgi({"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_USER": "bob", "REQUEST_METHOD": "GET"}, lambda *a: None))
    assert _charged(telemetry)[-2:] == [("bob", U), (U, U)]


def test_without_trusted_proxies_the_start_says_any_client_can_name_its_user(caplog):
    UsageContextMiddleware(_endpoint, headers=HEADERS)
    from otel_tokens import logs as safety

    safety._reported.discard("trusted-any-peer")
    UsageContextMiddleware(_endpoint, headers=HEADERS, proxies=[])
    assert "a client that reaches the app directly can name its user" in caplog.text
    settings = load_settings({"OTEL_TOKENS_TRUSTED_PROXIES": "10.0.0.0/8, unix"})
    assert settings.trusted_proxies == ("10.0.0.0/8", "unix")
    bad = load_settings({"OTEL_TOKENS_TRUSTED_PROXIES": "10.0.0.0/8,proxy.internal"})
    assert bad.trusted_proxies == ("none",) and "'proxy.internal', not an IP address" in bad.errors[0]


HOSTILE_IDS = [  # raw header bytes -> the one id they are
    ("\uff41\uff4c\uff49\uff43\uff45".encode(), "alice"),  # fullwidth
    ("al\u200bice".encode(), "alice"),  # a zero-width space
    ("\ufeffalice".encode(), "alice"),  # a BOM
    ("Jose\u0301".encode(), "Jos\u00e9"),  # decomposed accent: the composed one
    ("\u5f20\u4e09".encode(), "\u5f20\u4e09"),  # a Chinese name, as it is
]
NOBODY = [b"mal\xffory", "\uff41\uff4c\uff49\uff43\uff45".encode()[:-1]]  # not UTF-8, or cut mid-character


@pytest.mark.e2e
def test_the_same_header_bytes_give_the_same_id_under_every_server():
    """wsgiref and gunicorn (real servers, real sockets) and the ASGI path: NFKC, invisible characters
    removed, the same id from the same bytes whichever server the app runs under."""
    import json
    import socket
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from otel_tokens.web.asgi import request_values
    from tests.support.id_echo_app import TRUSTED, app

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    wsgiref = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    threading.Thread(target=wsgiref.serve_forever, daemon=True).start()
    port = free_port()
    gunicorn = subprocess.Popen([str(BIN / "gunicorn"), "-b", f"127.0.0.1:{port}", "-w", "1",
                                 "tests.support.id_echo_app:app"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def ask(server_port: int, raw: bytes) -> dict:
        with socket.create_connection(("127.0.0.1", server_port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\nX-Forwarded-User: " + raw + b"\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return json.loads(data.split(b"\r\n\r\n", 1)[1])

    try:
        wait_http(f"http://127.0.0.1:{port}/")
        for raw, expected in HOSTILE_IDS:
            asgi = request_values({"type": "http", "headers": [(b"x-forwarded-user", raw)]}, TRUSTED)
            found = {"wsgiref": ask(wsgiref.server_address[1], raw), "gunicorn": ask(port, raw), "asgi": asgi}
            if raw.endswith(b"\x85") and found["wsgiref"] == {}:  # wsgiref cut it at 0x85: nobody's, not another id
                found.pop("wsgiref")
            assert all(values == {"user.id": expected} for values in found.values()), (raw, found)
        for raw in NOBODY:
            asgi = request_values({"type": "http", "headers": [(b"x-forwarded-user", raw)]}, TRUSTED)
            assert ask(wsgiref.server_address[1], raw) == ask(port, raw) == asgi == {}, raw
    finally:
        wsgiref.shutdown()
        gunicorn.terminate()
        gunicorn.wait(timeout=10)
