"""`otel-tokens guard`: the quota-state endpoint, a sidecar beside the rule engine.

Its state is what the rule engines' own `/api/v1/alerts` says (alert_resync.py, quota/alert/ruler.py); Alertmanager's
webhook on POST /alertmanager only prompts an earlier read, its content is never applied. In-app guards
poll GET /state (see otel_tokens/quota/alert/mode.py for the in-app half); a state the rulers have not confirmed for
`stale_after` seconds is answered 503, so the apps act as with the guard down (they keep what they
blocked, for a bounded time). Both paths need the bearer token when one is configured, and
without one the endpoint listens on loopback only. Served by waitress: it reads whole requests
before a worker thread sees them (a slow client holds a socket, never a thread) and caps body and
header sizes, idle connections and the number of connections.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from otel_tokens.quota.alert.auth import authorized
from otel_tokens.quota.alert.state import AlertState, PayloadError, parse_webhook

MAX_BODY = 1 << 20  # bytes of a webhook body; Alertmanager's largest groups are far smaller
MAX_HEADERS = 16 << 10
MAX_ENTRIES = 10_000  # principals per section in one answer
CONNECTION_LIMIT = 500  # poll(), not select(): no 1,024-descriptor ceiling
CHANNEL_TIMEOUT = 10  # seconds a connection may stay silent between requests
REQUEST_DEADLINE = 5.0  # seconds from a request's first byte to its last: trickling does not extend it
PER_PEER = 32  # connections one address may hold: one host cannot take the slots of the others

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

    def __init__(self, state: AlertState, token: str = "", max_entries: int = MAX_ENTRIES,
                 on_webhook: Callable[[], None] | None = None) -> None:
        self.state, self.token, self.max_entries = state, token, max_entries
        self.on_webhook = on_webhook  # Alertmanager said something changed: read the rulers soon
        self._snapshot: tuple[str, bytes] = ("", b"")  # (version, body): serialized once per change
        self._stale_after: float | None = None  # None: the state is set by the embedding code, never stale
        self._synced_at: float | None = None
        self.grants: Any = None  # ops/grant_endpoint.GrantEndpoint: approvals, with approvers' own tokens

    def require_sync(self, stale_after: float) -> None:
        """Answer 503 on /state and /-/ready until the rulers were read, and again whenever their last
        answer is older than `stale_after` seconds: an empty or old state must not read as "nobody over"."""
        self._stale_after = stale_after

    def synced(self) -> None:
        self._synced_at = time.monotonic()

    def stale(self) -> bool:
        if self._stale_after is None:
            return False
        return self._synced_at is None or time.monotonic() - self._synced_at > self._stale_after

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        held = self.stale()
        if path == "/-/ready":
            return _reply(start_response, 503 if held else 200, {"status": "stale" if held else "ready"})
        if self.grants is not None and (path == "/grants" or path.startswith("/grants/")):
            status, body = self.grants.handle(method, path, environ.get("HTTP_AUTHORIZATION"))
            return _reply(start_response, status, body,
                          [("WWW-Authenticate", 'Bearer realm="otel-tokens approvers"')] if status == 401 else None)
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
        if held:
            return _reply(start_response, 503, {"error": "the rule engine's alert state is not current"},
                          [("Retry-After", "5")])
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
            parse_webhook(json.loads(environ["wsgi.input"].read(length)))  # checked, never applied
        except RecursionError:
            return _reply(start_response, 400, {"error": "not an Alertmanager webhook payload: nested too deep"})
        except (ValueError, PayloadError) as error:  # PayloadError names the entry and field
            return _reply(start_response, 400, {"error": f"not an Alertmanager webhook payload: {error}"})
        if self.on_webhook is not None:
            self.on_webhook()
        return _reply(start_response, 200, {"status": "the rule engine's alerts will be read again"})

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


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large", 503: "Service Unavailable"}


def _send(start_response: StartResponse, status: int, data: bytes,
          headers: list[tuple[str, str]] | None = None) -> Iterable[bytes]:
    start_response(f"{status} {_REASONS[status]}", [("Content-Type", "application/json"),
                                                    ("Content-Length", str(len(data))), *(headers or [])])
    return [data]


class AlertEndpoint:
    """The endpoint on host:port (0: a free port), served in the calling thread by `serve_forever`."""

    def __init__(self, host: str, port: int, state: AlertState | None = None, token: str = "",
                 max_entries: int = MAX_ENTRIES, threads: int = 4, on_webhook: Callable[[], None] | None = None
                 ) -> None:
        from waitress.server import create_server

        if not token and not loopback(host):
            raise ValueError(f"refusing to listen on {host} without a token: set OTEL_TOKENS_GUARD_TOKEN(_FILE) "
                             "or --token-file, or listen on 127.0.0.1")
        self.state = state or AlertState()
        self.app = GuardApp(self.state, token, max_entries, on_webhook)
        self._server = create_server(
            self.app, host=host, port=port, threads=threads, connection_limit=CONNECTION_LIMIT,
            channel_timeout=CHANNEL_TIMEOUT, cleanup_interval=1, max_request_body_size=MAX_BODY,
            max_request_header_size=MAX_HEADERS, ident="otel-tokens-guard", expose_tracebacks=False,
            asyncore_loop_timeout=0.2, asyncore_use_poll=True)
        _limit_slow_peers(self._server)
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


def _limit_slow_peers(server: Any) -> None:
    """waitress closes connections that are silent too long; a client trickling one byte at a time is
    never silent. So each request gets a deadline from its first byte, and each peer a connection cap."""
    from waitress.channel import HTTPChannel

    peers: dict[str, int] = {}

    class Channel(HTTPChannel):  # type: ignore[misc]
        def __init__(self, server: Any, sock: Any, addr: Any, adj: Any, map: Any = None) -> None:
            super().__init__(server, sock, addr, adj, map)
            self.request_started: float | None = None
            self._peer = str(addr[0]) if isinstance(addr, tuple) else str(addr)
            peers[self._peer] = peers.get(self._peer, 0) + 1
            self._counted = True
            if peers[self._peer] > PER_PEER:
                self.will_close = True

        def received(self, data: bytes) -> bool:
            if self.request is None and data and self.request_started is None:
                self.request_started = time.monotonic()
            result = super().received(data)
            if self.request is None:  # nothing half-read: the next request starts its own clock
                self.request_started = None
            return bool(result)

        def del_channel(self, map: Any = None) -> None:
            if getattr(self, "_counted", False):
                self._counted = False
                left = peers.get(self._peer, 1) - 1
                if left > 0:
                    peers[self._peer] = left
                else:
                    peers.pop(self._peer, None)
            super().del_channel(map)

    def maintenance(now: float) -> None:
        cutoff, late = now - server.adj.channel_timeout, time.monotonic() - REQUEST_DEADLINE
        for channel in list(server.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if (not channel.requests and channel.last_activity < cutoff) or (started is not None and started < late):
                channel.will_close = True

    server.channel_class = Channel
    server.maintenance = maintenance


def serve(host: str, port: int, state: AlertState | None = None, token: str = "",
          max_entries: int = MAX_ENTRIES, on_webhook: Callable[[], None] | None = None) -> AlertEndpoint:
    """The guard endpoint: POST /alertmanager (webhook), GET /state, GET /-/ready."""
    return AlertEndpoint(host, port, state, token, max_entries, on_webhook=on_webhook)
