"""Who pays for a web request: the user an authenticating proxy vouched for (trusted headers), or the
app's own `identify`; never what the client claimed (issue 17). In process through the ASGI and WSGI
middleware, and zero-code: a real FastAPI app under `opentelemetry-instrument uvicorn`."""

from __future__ import annotations

import asyncio

import pytest
import torch

from otel_tokens import names, usage_context
from otel_tokens.config import load_settings
from otel_tokens.web import UsageContextMiddleware, UsageContextWSGIMiddleware
from tests.support import tiny_models as tm
from tests.support.tiny_models import forcing

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
