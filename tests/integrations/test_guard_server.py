"""`otel-tokens guard` as an attacker meets it: it believes only the rule engines' own alert state (a
webhook, even with the token, is a prompt to re-read, never a fact), a ruler restart or a silent shard
lifts no block, oversized, deep and slow requests cost bounded memory and no threads, a flood of
connections that starves the polls unblocks nobody, polls are cheap (ETag, changes only), and the
in-app guard never waits on it at start."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from otel_tokens import names
from otel_tokens.config.settings import AlertSettings, GuardRule, GuardSettings
from otel_tokens.ops.alert_endpoint import AlertEndpoint, serve
from otel_tokens.quota.alert.mode import AlertMode
from otel_tokens.quota.alert.state import AlertState
from tests.support.ruler_stub import RulerStub

TOKEN = "s3cret-guard-token-for-tests-0123"
RULES = (GuardRule("user", "reject", "critical"),)


def alert(user: str, severity: str = "critical", status: str = "firing") -> dict:
    return {"status": status, "labels": {"alertname": "LLMUserTokenQuota", "user_id": user, "severity": severity,
                                         "window": "24h", "quota": "tokens"},
            "annotations": {"usage": "1.1k tokens", "limit": "1k tokens", "percent": "110%"}}


@pytest.fixture
def guard() -> Iterator[AlertEndpoint]:
    server = serve("127.0.0.1", 0, token=TOKEN)
    server.prompts = []  # type: ignore[attr-defined]
    server.app.on_webhook = lambda: server.prompts.append(time.monotonic())  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _block(state: AlertState, *users: str) -> None:
    """What a ruler's answer puts in the state: these users' critical token alerts."""
    state.apply([(("user", user, "tokens", "24h", "critical"),
                  {"severity": "critical", "window": "24h", "quota": "tokens"}) for user in users])


def _url(server: AlertEndpoint, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def _request(server: AlertEndpoint, path: str, body: object = None, token: str | None = TOKEN,
             method: str | None = None,
             headers: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(_url(server, path), data=data, method=method, headers=headers or {})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_only_the_token_reaches_the_guard_and_a_webhook_is_a_prompt_never_a_fact(guard):
    forged = {"alerts": [alert("victim")]}
    assert _request(guard, "/alertmanager", forged, token=None)[0] == 401
    assert _request(guard, "/alertmanager", forged, token="wrong-token-wrong-token")[0] == 401
    assert _request(guard, "/elsewhere", forged)[0] == 404
    assert _request(guard, "/state", forged)[0] == 405
    assert _request(guard, "/alertmanager", method="GET")[0] == 405
    assert _request(guard, "/state", token=None)[0] == 401  # who is over quota is nobody else's business
    assert _request(guard, "/-/ready", token=None)[0] == 200
    assert guard.prompts == []
    _block(guard.state, "alice")
    # with the token (Alertmanager's, or stolen): a firing alert for the victim, a resolution for alice
    webhook = {"alerts": [alert("victim"), alert("alice", status="resolved")]}
    assert _request(guard, "/alertmanager", webhook)[0] == 200
    status, body = _request(guard, "/state")
    assert status == 200 and set(json.loads(body)["users"]) == {"alice"}  # neither applied
    assert len(guard.prompts) == 1  # only: read the rulers again


def test_without_a_token_it_listens_on_loopback_only():
    for host in ("0.0.0.0", "10.0.0.5", "::"):
        with pytest.raises(ValueError, match=r"refusing to listen on .* without a token"):
            serve(host, 0)
    serve("127.0.0.1", 0).shutdown()
    serve("0.0.0.0", 0, token=TOKEN).shutdown()


def test_a_webhook_body_is_checked_and_junk_prompts_nothing(guard):
    for junk in (b"not json", b"[]", b'{"alerts": 5}', json.dumps({"alerts": [dict(alert("x"), status="maybe")]})
                 .encode(), json.dumps({"alerts": [alert("a"), {"status": "firing", "labels": ["x"]}]}).encode()):
        assert _request(guard, "/alertmanager", junk)[0] == 400
    assert guard.prompts == [] and guard.state.empty()


def _raw(server: AlertEndpoint, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=timeout) as sock:
        sock.sendall(data)
        return sock.recv(4096)


def test_oversized_and_deeply_nested_bodies_are_refused_cheaply(guard):
    head = (f"POST /alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 400000000\r\n\r\n").encode()
    started = time.monotonic()
    assert _raw(guard, head).startswith(b"HTTP/1.1 413")  # refused on the header, never read
    assert time.monotonic() - started < 3
    deep = b"[" * 200_000 + b"]" * 200_000
    status, _ = _request(guard, "/alertmanager", deep)
    assert status in (400, 413) and _request(guard, "/-/ready")[0] == 200


def _poll_from(server: AlertEndpoint, source: str) -> int:
    """GET /state from another loopback address (127.0.0.0/8 is all ours): another peer."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5,
                                            source_address=(source, 0))
    try:
        connection.request("GET", "/state", headers={"Authorization": f"Bearer {TOKEN}"})
        return connection.getresponse().status
    finally:
        connection.close()


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_slow_clients_hold_sockets_not_threads_and_cannot_starve_the_polls(guard):
    """The attack: hundreds of connections trickling a request (one byte before each silence ends)."""
    threads = threading.active_count()
    sockets = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", guard.server_address[1]), timeout=5)
            sock.sendall(b"GET /state HTTP/1.1\r\nX-a: ")
            sockets.append(sock)
        time.sleep(1.5)
        assert threading.active_count() <= threads + 1  # waitress buffers: no thread per connection
        assert sum(not _closed(s) for s in sockets) <= 32  # one peer holds at most 32 connections
        started = time.monotonic()
        assert _poll_from(guard, "127.0.0.2") == 200  # another peer is served at once
        assert time.monotonic() - started < 2
        for _ in range(8):  # trickle for 8 s: the request deadline (5 s) closes them anyway
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.sendall(b"a")
            time.sleep(1)
        assert all(_closed(s) for s in sockets)
    finally:
        for sock in sockets:
            sock.close()


def test_polls_are_cheap_304_when_unchanged_and_changes_only_otherwise():
    state = AlertState()
    state.apply([(("user", f"forged-{i}", "tokens", "24h", "critical"), {"severity": "critical", "window": "24h",
                                                                   "quota": "tokens"}) for i in range(100_000)])
    server = serve("127.0.0.1", 0, state=state, token=TOKEN, max_entries=5000)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, body = _request(server, "/state")
        full = json.loads(body)
        assert status == 200 and len(full["users"]) == 5000 and full["truncated"] == 95_000
        etag = f'"{full["version"]}"'
        assert _request(server, "/state", headers={"If-None-Match": etag})[0] == 304
        guard = AlertMode(GuardSettings(AlertSettings(_url(server, "/state"), 1.0, token=TOKEN), rules=RULES))
        guard.refresh()
        assert guard.healthy and len(guard._over["users"]) == 5000
        state.apply([(("user", "alice", "tokens", "24h", "critical"), {"severity": "critical", "window": "24h",
                                                                 "quota": "tokens"})])
        status, body = _request(server, f"/state?since={full['version']}")
        assert status == 200 and json.loads(body)["changes"] == {"users": {"alice": {
            "severity": "critical", "window": "24h", "quota": "tokens"}}, "departments": {}, "apps": {}}
        assert len(body) < 300  # one change, not 100,000 entries
        guard.refresh()  # applies the change alone
        assert guard.decide("m", {names.USER_ID: "alice"}).action == "reject"
        assert len(guard._over["users"]) == 5001
    finally:
        server.shutdown()


class _Silent:
    """Accepts connections and never answers: a state source that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return


@pytest.mark.parametrize("fail_closed", [False, True])
def test_start_up_never_waits_on_the_state_and_acts_as_configured_until_it_arrives(fail_closed):
    from otel_tokens import QuotaExceededError, TokenUsageInstrumentor
    from otel_tokens.config.settings import Settings
    from tests.support.telemetry import make_telemetry

    silent = _Silent()
    _, tracer_provider, meter_provider = make_telemetry()
    instrumentor = TokenUsageInstrumentor()
    started = time.monotonic()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, settings=Settings(
        guard=GuardSettings(AlertSettings(f"http://127.0.0.1:{silent.port}/state", 2.0), fail_closed=fail_closed,
                            rules=RULES)))
    try:
        # a first poll waited on would take the whole 2 s request timeout; instrument() itself took 0.54 s on a
        # loaded CI machine, so the margin is set between the two
        assert time.monotonic() - started < 1.5
        decision = instrumentor.recorder.enforcement.alert.decide("m", {names.USER_ID: "alice"})
        assert decision.action == ("fail_closed" if fail_closed else "fail_open")
        assert isinstance(decision.error(), QuotaExceededError) or not fail_closed
    finally:
        instrumentor.uninstrument()
        silent.sock.close()


def test_a_state_source_that_goes_away_keeps_the_last_state_for_the_grace(guard):
    _block(guard.state, "alice")
    app = AlertMode(GuardSettings(AlertSettings(_url(guard, "/state"), 1.0, token=TOKEN, stale_grace=30), rules=RULES))
    app.refresh()
    guard.shutdown()
    app.refresh()  # the source is gone: alice stays refused for the grace, bob is served
    assert app.decide("m", {names.USER_ID: "alice"}).action == "reject"
    assert app.decide("m", {names.USER_ID: "bob"}) is None
    app.last_update -= 31
    app.refresh()
    assert app.decide("m", {names.USER_ID: "bob"}).action == "fail_open"
    assert app.decide("m", {names.USER_ID: "alice"}).action == "reject"  # blocked stays blocked: block_hold
    app.last_update -= 3600
    assert app.decide("m", {names.USER_ID: "alice"}).action == "fail_open"  # for at most the hold


def test_changes_only_answers_never_skip_what_the_log_forgot(monkeypatch):
    import otel_tokens.quota.alert.state as gs

    monkeypatch.setattr(gs, "LOG_SIZE", 100)
    state = AlertState()
    state._log = gs.deque(maxlen=100)
    entry = {"severity": "critical"}
    state.apply([(("user", "a", "tokens", "24h", "critical"), entry)])
    v1 = state.tag
    # one version, 100 changes
    state.apply([(("user", f"u{i}", "tokens", "24h", "critical"), entry) for i in range(100)])
    state.apply([(("user", "a", "tokens", "24h", "critical"), None)])
    assert state.since(v1) is None  # the log lost part of v2: only a whole snapshot is right
    v3 = state.tag
    state.apply([(("user", "b", "tokens", "24h", "critical"), entry)])
    assert state.since(v3)["changes"]["users"] == {"b": entry}
    for tag in (f"{state.epoch}-\u00b2", f"{state.epoch}--1", "other-1", f"{state.epoch}-99999"):
        assert state.since(tag) is None


def test_the_state_is_served_only_while_the_rulers_confirm_it(guard):
    _block(guard.state, "alice")
    guard.app.require_sync(0.5)  # as the CLI does: a restarted guard knows nothing until the rulers answer
    assert _request(guard, "/state")[0] == 503 and _request(guard, "/-/ready", token=None)[0] == 503
    guard.app.synced()
    assert _request(guard, "/state")[0] == 200 and _request(guard, "/-/ready", token=None)[0] == 200
    time.sleep(0.6)  # the rulers have not answered since: the apps must not read an old state as current
    assert _request(guard, "/state")[0] == 503
    guard.app.synced()
    assert _request(guard, f"/state?since={guard.state.epoch}-%C2%B2")[0] == 200  # odd versions: whole answer
    assert _request(guard, "/state", token=None, headers={"Authorization": f"bearer {TOKEN}"})[0] == 200


def test_over_the_principal_cap_an_answer_is_refused_whole(monkeypatch):
    import otel_tokens.quota.alert.state as gs

    monkeypatch.setattr(gs, "MAX_PRINCIPALS", 3)
    state = AlertState()
    _block(state, "a", "b")
    with pytest.raises(gs.PayloadError, match="more than 3 principals"):
        _block(state, "c", "d")
    assert set(state.snapshot()["users"]) == {"a", "b"}


class _Fixed:
    """An HTTP server answering every GET with one fixed body (a broken state source or Alertmanager)."""

    def __init__(self, body: bytes, status: int = 200) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(self.server.body)))  # type: ignore[attr-defined]
                self.end_headers()
                self.wfile.write(self.server.body)  # type: ignore[attr-defined]

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.body = body  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.mark.parametrize("body", [b'{"users": {"alice": 5}, "departments": {}}',
                                  b'{"users": {"alice": {"severity": ["critical"]}}, "departments": {}}',
                                  b'{"version": "x-2", "changes": {"users": {"bob": {"severity": {}}}}}',
                                  b"<html>proxy error</html>", b"[" * 100_000])
def test_an_unreadable_state_is_refused_whole_and_the_last_one_kept(body):
    good = _Fixed(b'{"users": {"alice": {"severity": "critical"}}, "departments": {}}')
    app = AlertMode(GuardSettings(AlertSettings(good.url + "/state", 1.0), rules=RULES))
    app.refresh()
    good.httpd.body = body
    app.refresh()  # never raises; keeps alice refused, bob allowed
    assert app.decide("m", {names.USER_ID: "alice"}).action == "reject"
    assert app.decide("m", {names.USER_ID: "bob"}) is None
    good.httpd.shutdown()


@pytest.mark.parametrize("body", [b"not json", b"[" * 100_000, b'{"data": 5}', b"[]",
                                  b'{"status": "success", "data": []}'])  # the last: Alertmanager's v1 shape
def test_the_resync_thread_survives_any_answer(body):
    from otel_tokens.ops.alert_resync import Resync
    from otel_tokens.quota.alert.ruler import Rulers

    state = AlertState()
    _block(state, "alice")
    broken = _Fixed(body)
    resync = Resync(state, Rulers([broken.url]), 1.0)
    assert resync.once() is False and not state.empty()  # kept: not a ruler's answer
    broken.httpd.shutdown()


def test_a_ruler_answer_lifts_blocks_only_after_its_warm_up():
    """A restarted ruler's alert list is empty until its rules ran and `for:` passed again: 15 s + two
    10 s evaluations here. Its answers add blocks at once but lift none before that."""
    from otel_tokens.ops.alert_resync import sync
    from otel_tokens.quota.alert.ruler import Rulers

    ruler = RulerStub(alert_for=15, interval=10)
    rulers, state = Rulers([ruler.url]), AlertState()
    try:
        ruler.firing = [("alice", "critical")]
        assert sync(state, rulers) == [] and set(state.snapshot()["users"]) == {"alice"}
        ruler.restart()
        ruler.firing = [("bob", "critical")]  # a young ruler's new alerts count at once
        held = sync(state, rulers)
        assert set(state.snapshot()["users"]) == {"alice", "bob"}
        assert "restarted 0 s ago; its quota alerts need 35 s" in held[0]
        ruler.started -= 36
        assert sync(state, rulers) == [] and set(state.snapshot()["users"]) == {"bob"}  # now its word lifts
    finally:
        ruler.stop()


def test_several_rulers_are_a_union_and_a_silent_one_lifts_nothing_for_at_most_the_hold():
    from otel_tokens.ops.alert_resync import sync
    from otel_tokens.quota.alert.ruler import Rulers

    first, second = RulerStub(), RulerStub()
    rulers, state = Rulers([first.url, second.url]), AlertState()
    try:
        first.firing, second.firing = [("alice", "critical")], [("bob", "critical")]
        sync(state, rulers)
        assert set(state.snapshot()["users"]) == {"alice", "bob"}  # shards: each holds its own alerts
        first.stop()
        second.firing = []
        held = sync(state, rulers, hold=3)
        assert set(state.snapshot()["users"]) == {"alice", "bob"} and "did not answer" in held[0]
        time.sleep(3.1)
        sync(state, rulers, hold=3)
        assert state.empty()  # no ruler confirmed them for longer than the hold
    finally:
        second.stop()


def test_a_flood_of_connections_from_many_addresses_unblocks_nobody(guard):
    """The attack: 60 addresses x 32 idle connections (each within the per-peer cap) take every slot of
    the endpoint, the apps' polls fail, and the grace passes. alice was blocked: she stays blocked."""
    _block(guard.state, "alice")
    app = AlertMode(GuardSettings(AlertSettings(_url(guard, "/state"), 0.2, token=TOKEN, stale_grace=1.0), rules=RULES))
    app.refresh()
    assert app.healthy and app.decide("m", {names.USER_ID: "alice"}).action == "reject"
    sockets: list[socket.socket] = []
    try:
        for peer in range(60):
            for _ in range(32):
                with contextlib.suppress(OSError):
                    sock = socket.socket()
                    sock.setblocking(False)
                    sock.bind((f"127.0.1.{peer + 1}", 0))
                    with contextlib.suppress(BlockingIOError):
                        sock.connect(("127.0.0.1", guard.server_address[1]))
                    sockets.append(sock)
        started = time.monotonic()
        while app.healthy or time.monotonic() - started < 2:
            app.refresh()  # each poll waits up to its 1 s timeout and fails
            assert time.monotonic() - started < 30, "the flood never starved the polls"
        assert not app.healthy  # the polls failed for longer than the grace
        assert app.decide("m", {names.USER_ID: "alice"}).action == "reject"
        assert app.decide("m", {names.USER_ID: "bob"}).action == "fail_open"
    finally:
        for sock in sockets:
            sock.close()




def test_the_guard_command_refuses_alertmanager_as_its_source(capsys):
    from otel_tokens.ops.cli import main

    for argv in (["--resync", "http://alertmanager:9093"], ["--ruler", "http://am:9093/api/v2/alerts"], []):
        assert main(["guard", *argv]) == 2
        assert "give --ruler URL, the Prometheus or vmalert" in capsys.readouterr().err
