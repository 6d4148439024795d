"""Who pays under real servers: gunicorn and uvicorn apps under opentelemetry-instrument."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from otel_tokens import names
from tests.support.openai_server import OpenAIServer
from tests.support.prometheus_stack import free_port, wait_http
from tests.support.web_requests import BIN, post, start_web_app, tokens_by_principal

ROOT = Path(__file__).resolve().parents[2]


U = names.UNATTRIBUTED


@pytest.fixture(scope="module")
def web_app():
    with OpenAIServer() as model:
        port, metrics_port = free_port(), free_port()
        process = start_web_app(port, metrics_port, model.base_url, "web-app", {
            "OTEL_TOKENS_TRUSTED_HEADERS": "user.id=X-Forwarded-User,department=X-Forwarded-Groups",
            "OTEL_TOKENS_TRUSTED_PROXIES": "127.0.0.1"})  # the proxy; 127.0.0.2 below is a client on its own
        try:
            wait_http(f"http://127.0.0.1:{port}/docs")
            yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics", model
        finally:
            process.terminate()
            output = process.communicate(timeout=30)[0]
            if os.environ.get("OTEL_TOKENS_TEST_VERBOSE"):
                print(output)


def test_zero_code_fastapi_charges_the_proxy_s_user_never_the_client_s_baggage(web_app):
    """Under the agent, OTel's FastAPI instrumentation extracts the client's baggage; our mapping of the
    proxy's headers decides who pays, and only our three keys with those values go to the model server."""
    base, metrics, model = web_app
    forged = "user.id=mallory,department=support,x-internal-auth=SECRET123"
    before = len(model.requests)
    assert post(f"{base}/chat", [("X-Forwarded-User", "alice"), ("X-Forwarded-Groups", "sales"),
                                  ("baggage", forged)]) == 200
    assert post(f"{base}/chat", [("baggage", forged)]) == 200  # no proxy header: nobody's, not mallory's
    assert post(f"{base}/chat-as-app", [("X-Forwarded-User", "alice"), ("baggage", forged)]) == 200
    # a client reaching the app directly, not through the proxy: its X-Forwarded-User bills nobody
    import http.client

    direct = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=30,
                                        source_address=("127.0.0.2", 0))
    direct.request("POST", "/chat", body=b"{}", headers={"X-Forwarded-User": "alice"})
    assert direct.getresponse().status == 200
    direct.close()
    sent = [r.headers.get("baggage", "") for r in model.requests[before:]]
    usage = tokens_by_principal(metrics)
    per_call = next(iter(usage.values())) if usage else 0
    assert per_call > 0
    assert usage == {("alice", "sales"): per_call, (U, U): 2 * per_call,
                     ("service-account", "platform"): per_call}
    assert sent == ["user.id=alice,department=sales", "", "user.id=service-account,department=platform", ""]
    assert all("SECRET123" not in b and "mallory" not in b for b in sent)


HOSTILE_IDS = [  # raw header bytes -> the one id they are
    ("\uff41\uff4c\uff49\uff43\uff45".encode(), "alice"),  # fullwidth
    ("al\u200bice".encode(), "alice"),  # a zero-width space
    ("\ufeffalice".encode(), "alice"),  # a BOM
    ("Jose\u0301".encode(), "Jos\u00e9"),  # decomposed accent: the composed one
    ("\u5f20\u4e09".encode(), "\u5f20\u4e09"),  # a Chinese name, as it is
]


NOBODY = [b"mal\xffory", "\uff41\uff4c\uff49\uff43\uff45".encode()[:-1]]  # not UTF-8, or cut mid-character
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
