"""A refused LLM call the app lets through becomes HTTP 429 with Retry-After at the middleware: a real FastAPI app
served by uvicorn, and a WSGI app served by wsgiref, both in budget mode on a real Redis, the user from the
proxy's trusted header."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
import uvicorn
from fastapi import FastAPI, WebSocket

from otel_tokens.web import UsageContextMiddleware, UsageContextWSGIMiddleware
from tests.support.budget import budget_app, write_quotas
from tests.support.prometheus_stack import free_port

HEADERS = {"user.id": "X-Forwarded-User"}


def _post(url: str, user: str) -> tuple[int, Any, dict]:
    request = urllib.request.Request(url, data=b"{}", method="POST",
                                     headers={"X-Forwarded-User": user, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read() or b"{}")


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[str]:
    """`app` served by a real uvicorn in a thread on a free port: its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _fastapi(client: Any, **middleware: Any) -> FastAPI:
    api = FastAPI()

    @api.post("/chat")
    def chat() -> dict[str, int]:
        reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        return {"tokens": reply.usage.total_tokens}

    api.add_middleware(UsageContextMiddleware, headers=HEADERS, proxies=["127.0.0.1"], **middleware)
    return api


def _wsgi(client: Any) -> Any:
    def chat(environ: Any, start_response: Any) -> list[bytes]:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        start_response("200 OK", [("content-type", "application/json")])
        return [b"{}"]

    return chat


def _check_minute(url: str) -> None:
    """Two requests a minute: the third within the minute is 429 with the seconds until the first leaves."""
    first = time.monotonic()
    assert _post(url, "alice")[0] == 200
    assert _post(url, "alice")[0] == 200
    status, headers, body = _post(url, "alice")
    elapsed = time.monotonic() - first
    assert status == 429, body
    retry = int(headers.get("Retry-After"))
    assert 60 - elapsed - 1 <= retry <= 61 - elapsed + 1  # the first request's second leaves the window then
    assert body == {"error": {"type": "rate_limited", "scope": "user", "window": "minute", "quota": "requests",
                              "retry_after": retry,
                              "message": f"LLM quota reached (user minute requests); retry after {retry} s"}}
    assert _post(url, "bob")[0] == 200  # another user is served


def test_fastapi_answers_a_rate_limited_call_429_with_retry_after(tmp_path, redis_url):
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"minute": {"requests": 2}, "24h": {"tokens": 10**9}}})
    for app in budget_app(quotas, redis_url):
        api = _fastapi(app.client)
        with _serving(api) as base:
            _check_minute(f"{base}/chat")


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_wsgi_app_answers_a_rate_limited_call_429_with_retry_after(tmp_path, redis_url):
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"minute": {"requests": 2}, "24h": {"tokens": 10**9}}})
    for app in budget_app(quotas, redis_url):
        httpd = make_server("127.0.0.1", 0, UsageContextWSGIMiddleware(_wsgi(app.client), headers=HEADERS,
                                                                        proxies=["127.0.0.1"]), handler_class=_Quiet)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            _check_minute(f"http://127.0.0.1:{httpd.server_port}/chat")
        finally:
            httpd.shutdown()


def test_an_apps_own_handler_still_wins(tmp_path, redis_url):
    """An app that maps the refusal itself (its own message, its own status) is answered by its own handler."""
    from fastapi.responses import JSONResponse

    from otel_tokens import QuotaExceededError

    quotas = write_quotas(tmp_path / "q.yml", {"default": {"minute": {"requests": 1}, "24h": {"tokens": 10**9}}})
    async def busy(request: Any, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": "slow down"}, status_code=503)

    for app in budget_app(quotas, redis_url):
        api = _fastapi(app.client)
        api.add_exception_handler(QuotaExceededError, busy)
        with _serving(api) as base:
            url = f"{base}/chat"
            assert _post(url, "alice")[0] == 200
            assert _post(url, "alice")[:1] + (_post(url, "alice")[2],) == (503, {"detail": "slow down"})


def test_ratelimit_headers_tell_each_user_their_own_standing(tmp_path, redis_url):
    """rate_limit_headers=True: RateLimit-Policy names the user's windows, RateLimit the one nearest its limit
    (remaining, seconds to reset); bob's response says nothing of alice's spending."""
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"minute": {"requests": 2}, "24h": {"tokens": 10**9}}},
                          {"default": {"tokens": 10**9}})
    for app in budget_app(quotas, redis_url):
        api = _fastapi(app.client, rate_limit_headers=True)
        with _serving(api) as base:
            url = f"{base}/chat"
            status, headers, _ = _post(url, "alice")
            assert status == 200
            # the user's windows only (the department's month is not the user's to see)
            assert headers.get("RateLimit-Policy") == '"24h-tokens";q=1000000000;w=86400, "minute-requests";q=2;w=60'
            assert headers.get("RateLimit") == '"minute-requests";r=1;t=60'
            headers = _post(url, "alice")[1]
            assert headers.get("RateLimit") == '"minute-requests";r=0;t=60'
            status, headers, _ = _post(url, "alice")
            assert status == 429 and headers.get("RateLimit") == '"minute-requests";r=0;t=60'
            bob = _post(url, "bob")[1]
            assert bob.get("RateLimit") == '"minute-requests";r=1;t=60'  # bob's own, not alice's


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _plain_fastapi(client: Any) -> FastAPI:
    """A FastAPI app with no middleware and no handler of ours: its own usage_context names the user."""
    from otel_tokens import usage_context

    api = FastAPI()

    @api.post("/chat")
    def chat() -> dict[str, int]:
        with usage_context(user_id="alice"):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        return {}

    return api


def test_zero_code_a_fastapi_app_without_any_middleware_answers_429(tmp_path, redis_url):
    """Instrumented, a plain FastAPI app (no middleware of ours, no handler) answers a refusal 429 with
    Retry-After: the package gives the app a default handler for QuotaExceededError."""
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"minute": {"requests": 1}, "24h": {"tokens": 10**9}}})
    for app in budget_app(quotas, redis_url):
        api = _plain_fastapi(app.client)
        with _serving(api) as base:
            url = f"{base}/chat"
            assert _post(url, "ignored")[0] == 200
            status, headers, body = _post(url, "ignored")
            assert status == 429 and 58 <= int(headers.get("Retry-After")) <= 61
            assert body["error"]["type"] == "rate_limited" and body["error"]["window"] == "minute"


def test_a_websocket_refusal_is_left_to_the_app_not_answered_as_http():
    """After accept, an HTTP answer is no longer possible: the refusal reaches the app's websocket handling."""
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from otel_tokens import RateLimitExceededError
    from otel_tokens.web import starlette_refusals

    api = FastAPI()

    @api.websocket("/ws")
    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        raise RateLimitExceededError("user", "alice", "minute", "requests", None, None, "critical", None, 5.0)

    starlette_refusals.instrument()
    try:
        with pytest.raises(RateLimitExceededError), TestClient(api) as client:
            with client.websocket_connect("/ws") as connection:
                with contextlib.suppress(WebSocketDisconnect):
                    connection.receive_text()
    finally:
        starlette_refusals.uninstrument()


def test_no_ratelimit_headers_for_a_request_without_a_user(tmp_path, redis_url):
    """A request the proxy names only a department for is charged to __unattributed__, a pool others share:
    its numbers are not this caller's to see."""
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"minute": {"requests": 100}, "24h": {"tokens": 10**9}}})
    for app in budget_app(quotas, redis_url):
        middleware = UsageContextWSGIMiddleware(_wsgi(app.client), headers={"department": "X-Department"},
                                                proxies=["127.0.0.1"], rate_limit_headers=True)
        httpd = make_server("127.0.0.1", 0, middleware, handler_class=_Quiet)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{httpd.server_port}/chat", data=b"{}",
                                             method="POST", headers={"X-Department": "sales"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
                assert response.headers.get("RateLimit") is None and response.headers.get("RateLimit-Policy") is None
        finally:
            httpd.shutdown()


def _plain_asgi(client: Any) -> Any:
    async def plain(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return plain


def test_a_plain_asgi_app_behind_the_middleware_answers_429(tmp_path, redis_url):
    """No Starlette in between (its own handler would answer first): the middleware's own 429."""
    quotas = write_quotas(tmp_path / "q.yml", {"default": {"minute": {"requests": 1}, "24h": {"tokens": 10**9}}})
    for app in budget_app(quotas, redis_url):
        wrapped = UsageContextMiddleware(_plain_asgi(app.client), headers=HEADERS, proxies=["127.0.0.1"])
        with _serving(wrapped) as base:
            url = f"{base}/chat"
            assert _post(url, "alice")[0] == 200
            status, headers, body = _post(url, "alice")
            assert status == 429 and 58 <= int(headers.get("Retry-After")) <= 61, body
            assert body["error"]["window"] == "minute"
