"""`otel-tokens guard`: the quota-state endpoint, a sidecar beside Alertmanager.

Alertmanager posts its webhooks to POST /alertmanager; in-app guards poll GET /state (see
otel_tokens/guard.py for the in-app half). Both need the bearer token when one is configured, and
without one the endpoint listens on loopback only. Served by waitress: it reads whole requests
before a worker thread sees them (a slow client holds a socket, never a thread) and caps body and
header sizes, idle connections and the number of connections.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from ..guard_auth import authorized
from ..guard_state import GuardState, PayloadError, parse_webhook

MAX_BODY = 1 << 20  # bytes of a webhook body; Alertmanager's largest groups are far smaller
MAX_HEADERS = 16 << 10
MAX_ENTRIES = 10_000  # principals per section in one answer
CONNECTION_LIMIT = 500  # poll(), not select(): no 1,024-descriptor ceiling
CHANNEL_TIMEOUT = 10  # seconds a connection may stay silent, request half-sent or not

StartResponse = Callable[..., Any]


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class GuardApp:
    """The WSGI application: three paths, nothing else."""

    def __init__(self, state: GuardState, token: str = "", max_entries: int = MAX_ENTRIES) -> None:
        self.state, self.token, self.max_entries = state, token, max_entries
        self._snapshot: tuple[str, bytes] = ("", b"")  # (version, body): serialized once per change

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if path == "/-/ready":
            return _reply(start_response, 200, {"status": "ready"})
        if path not in ("/alertmanager", "/state"):
            return _reply(start_response, 404, {"error": "not found: POST /alertmanager, GET /state"})
        wanted = "POST" if path == "/alertmanager" else "GET"
        if method != wanted:
            return _reply(start_response, 405, {"error": f"{path} takes {wanted} only"}, [("Allow", wanted)])
        if self.token and not authorized(environ.get("HTTP_AUTHORIZATION"), self.token):
            return _reply(start_response, 401, {"error": "a bearer token is required"},
                          [("WWW-Authenticate", 'Bearer realm="otel-tokens guard"')])
        if path == "/alertmanager":
            return self._webhook(environ, start_response)
        return self._state(environ, start_response)

    def _webhook(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            return _reply(start_response, 413 if length > MAX_BODY else 400,
                          {"error": f"a webhook body of 1 to {MAX_BODY} bytes is required"})
        try:
            payload = json.loads(environ["wsgi.input"].read(length))
            changes = parse_webhook(payload)  # all of it, before any of it is applied
        except RecursionError:
            return _reply(start_response, 400, {"error": "not an Alertmanager webhook payload: nested too deep"})
        except (ValueError, PayloadError) as error:  # PayloadError names the entry and field
            return _reply(start_response, 400, {"error": f"not an Alertmanager webhook payload: {error}"})
        self.state.apply(changes)
        return _reply(start_response, 200, {"status": "ok"})

    def _state(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        tag = self.state.tag
        etag = f'"{tag}"'
        if environ.get("HTTP_IF_NONE_MATCH") == etag:
            start_response("304 Not Modified", [("ETag", etag)])
            return [b""]
        since = parse_qs(environ.get("QUERY_STRING", "")).get("since")
        if since:
            delta = self.state.since(since[0][:64])
            if delta is not None:
                return _reply(start_response, 200, delta, [("ETag", f'"{delta["version"]}"')])
        version, body = self._snapshot
        if version != tag:
            snapshot = self.state.snapshot(self.max_entries)
            version, body = snapshot["version"], json.dumps(snapshot).encode()
            self._snapshot = (version, body)
        return _send(start_response, 200, body, [("ETag", f'"{version}"')])


def _reply(start_response: StartResponse, status: int, body: Any,
           headers: list[tuple[str, str]] | None = None) -> Iterable[bytes]:
    return _send(start_response, status, json.dumps(body).encode(), headers)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large"}


def _send(start_response: StartResponse, status: int, data: bytes,
          headers: list[tuple[str, str]] | None = None) -> Iterable[bytes]:
    start_response(f"{status} {_REASONS[status]}", [("Content-Type", "application/json"),
                                                    ("Content-Length", str(len(data))), *(headers or [])])
    return [data]


class GuardServer:
    """The endpoint on host:port (0: a free port), served in the calling thread by `serve_forever`."""

    def __init__(self, host: str, port: int, state: GuardState | None = None, token: str = "",
                 max_entries: int = MAX_ENTRIES, threads: int = 4) -> None:
        from waitress.server import create_server

        if not token and not loopback(host):
            raise ValueError(f"refusing to listen on {host} without a token: set OTEL_TOKENS_GUARD_TOKEN(_FILE) "
                             "or --token-file, or listen on 127.0.0.1")
        self.state = state or GuardState()
        self.app = GuardApp(self.state, token, max_entries)
        self._server = create_server(
            self.app, host=host, port=port, threads=threads, connection_limit=CONNECTION_LIMIT,
            channel_timeout=CHANNEL_TIMEOUT, cleanup_interval=1, max_request_body_size=MAX_BODY,
            max_request_header_size=MAX_HEADERS, ident="otel-tokens-guard", expose_tracebacks=False,
            asyncore_loop_timeout=0.2, asyncore_use_poll=True)
        self.server_address = (host, int(self._server.effective_port))
        self._stop, self._stopped = threading.Event(), threading.Event()
        self._running = False

    def serve_forever(self) -> None:
        from waitress import wasyncore

        server = self._server
        self._running = True
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=0.2, map=server._map, use_poll=True, count=1)
        finally:
            server.task_dispatcher.shutdown()
            wasyncore.close_all(server._map)  # in the serving thread: never under a running select
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever (from another thread) and wait for it, at most 5 s."""
        self._stop.set()
        if self._running:
            self._stopped.wait(5.0)
        else:
            from waitress import wasyncore

            self._server.task_dispatcher.shutdown()
            wasyncore.close_all(self._server._map)

    def server_close(self) -> None:
        """Kept for callers of the http.server-style interface: shutdown() already closed everything."""


def serve(host: str, port: int, state: GuardState | None = None, token: str = "",
          max_entries: int = MAX_ENTRIES) -> GuardServer:
    """The guard endpoint: POST /alertmanager (webhook), GET /state, GET /-/ready."""
    return GuardServer(host, port, state, token, max_entries)
