"""Real Prometheus / Alertmanager processes for tests: free ports, start, wait, a webhook receiver."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(count: int, attempts: int = 50) -> int:
    """A base port whose next `count` ports (base+1 .. base+count) are all free right now."""
    for _ in range(attempts):
        base = free_port() + 100
        sockets = []
        try:
            for offset in range(1, count + 1):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no block of {count} free ports found")


class Webhook:
    """Collects Alertmanager notifications with their arrival time."""

    def __init__(self) -> None:
        self.received: list[tuple[float, str, dict[str, Any]]] = []  # (time, path, payload)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                owner.received.append((time.monotonic(), self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, since: float = 0.0) -> list[tuple[float, str, dict[str, Any]]]:
        """(arrival, receiver path, alert) for every alert in every notification since `since`."""
        return [(t, path, alert) for t, path, payload in list(self.received) if t >= since
                for alert in payload["alerts"]]

    def wait_for(self, predicate: Callable[[str, dict[str, Any]], bool], since: float, timeout: float = 90.0
                 ) -> tuple[float, str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for arrival, path, alert in self.alerts(since):
                if predicate(path, alert):
                    return arrival, path, alert
            time.sleep(0.1)
        raise AssertionError(f"no matching notification within {timeout}s; got {self.alerts(since)}")


def open_url(url: str, data: bytes | None = None, method: str | None = None, timeout: float = 30.0,
             headers: dict[str, str] | None = None) -> Any:
    """urlopen for the stack's URLs, which may carry basic-auth credentials as user:password@."""
    from otel_tokens.prometheus_api import with_credentials

    url, auth = with_credentials(url, environ={})
    request = urllib.request.Request(url, data=data, method=method, headers={**(headers or {}), **auth})
    return urllib.request.urlopen(request, timeout=timeout)


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open_url(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def start_process(args: list[str], tmp_path: Path, name: str, **kwargs: Any) -> subprocess.Popen[Any]:
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **kwargs)


def stop_processes(processes: list[subprocess.Popen[Any]]) -> None:
    """Terminate in reverse start order (apps before the servers they talk to), then wait; kill after 10 s."""
    for process in reversed(processes):
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def web_auth(tmp_path: Path) -> tuple[Path, str]:
    """(web config, password) as `otel-tokens stack-secrets` makes them, for Prometheus and Alertmanager
    with basic auth on, as the shipped compose runs them."""
    from otel_tokens.ops.stack_secrets import PASSWORD_FILE, WEB_CONFIG, write

    write(tmp_path)
    return tmp_path / "secrets" / WEB_CONFIG, (tmp_path / "secrets" / PASSWORD_FILE).read_text().strip()


def _credentials(url: str, auth: tuple[Path, str] | None) -> str:
    from otel_tokens.ops.stack_secrets import WEB_USER

    return url.replace("http://", f"http://{WEB_USER}:{auth[1]}@") if auth else url


def start_prometheus(tmp_path: Path, binary: str, targets: list[str], rule_glob: str | None = None,
                     alertmanager: str | None = None, interval: str = "1s", remote_write: str | None = None,
                     retention: str = "15d", auth: tuple[Path, str] | None = None) -> tuple[str, subprocess.Popen[Any]]:
    """A real Prometheus on a free port scraping `targets` (host:port) as job `app`; returns (url, process).
    `remote_write`: also send what it scraped (not what its rules recorded) to that URL, as it would to
    VictoriaMetrics, Mimir or Thanos Receive. `auth` (web_auth()): basic auth on Prometheus and on the
    Alertmanager it notifies; the URL returned then carries the credentials."""
    import yaml

    port = free_port()
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": "app", "static_configs": [{"targets": targets}]}],
    }
    if rule_glob:
        config["rule_files"] = [rule_glob]
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        if auth:
            from otel_tokens.ops.stack_secrets import PASSWORD_FILE, WEB_USER

            config["alerting"]["alertmanagers"][0]["basic_auth"] = {
                "username": WEB_USER, "password_file": str(auth[0].parent / PASSWORD_FILE)}
    if remote_write:
        config["remote_write"] = [{"url": remote_write, "queue_config": {"batch_send_deadline": "1s"},
                                   "write_relabel_configs": [{"source_labels": ["__name__"], "action": "drop",
                                                              "regex": "llm_quota:.*|ALERTS|ALERTS_FOR_STATE"}]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    process = start_process([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'prom-data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--web.enable-lifecycle", "--rules.alert.resend-delay=1s",
                             f"--storage.tsdb.retention.time={retention}",
                             *([f"--web.config.file={auth[0]}"] if auth else [])], tmp_path, "prometheus")
    url = _credentials(f"http://127.0.0.1:{port}", auth)
    wait_http(f"{url}/-/ready")
    return url, process


def query(url: str, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    """Instant query result (`data.result`) from Prometheus's HTTP API."""
    from urllib.parse import urlencode

    params = {"query": promql, **({"time": str(at)} if at is not None else {})}
    with open_url(f"{url}/api/v1/query?{urlencode(params)}", timeout=30) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def rule_group(url: str, name: str) -> dict[str, Any]:
    """One rule group's state from /api/v1/rules: its rules' health and last error, when it last ran."""
    with open_url(f"{url}/api/v1/rules", timeout=30) as response:
        groups = json.load(response)["data"]["groups"]
    return next((g for g in groups if g["name"] == name), {"name": name, "missing": True})


def group_state(group: dict[str, Any]) -> str:
    """A rule group in a line, for a test's failure message."""
    rules = [(r.get("name"), r.get("health"), r.get("lastError")) for r in group.get("rules", [])
             if r.get("health") != "ok"]
    return (f"group {group['name']}: last evaluation {group.get('lastEvaluation')}, took "
            f"{group.get('evaluationTime')} s; rules not ok: {rules or 'none'}")


def start_shipped_alertmanager(tmp_path: Path, binary: str, webhook: Webhook, guard_url: str, guard_token_file: Path,
                               guard_repeat: str = "3s", smtp: str | None = None, auth: tuple[Path, str] | None = None
                               ) -> tuple[str, subprocess.Popen[Any]]:
    """Alertmanager with the shipped collector/alertmanager.yml, its people's receivers pointed at `webhook`
    (path = receiver name), the guard route at `guard_url`, its email at `smtp` (host:port; default a port
    nobody listens on), test timers, and basic auth with `auth` (web_auth()); returns (host:port, process)."""
    import string

    import yaml

    root = Path(__file__).resolve().parents[2]
    template = string.Template((root / "collector" / "alertmanager.yml").read_text())
    config = yaml.safe_load(template.substitute({
        "ALERT_WEBHOOK_URL": webhook.url + "/hook", "SMTP_SMARTHOST": smtp or f"127.0.0.1:{free_port()}",
        "SMTP_FROM": "alerts@example.test", "ALERT_EMAIL_TO": "oncall@example.test",
        "SMTP_AUTH_USERNAME": "", "SMTP_AUTH_PASSWORD": "", "SMTP_REQUIRE_TLS": "false",
        "GUARD_URL": guard_url, "GUARD_TOKEN_FILE": str(guard_token_file)}))
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    for route in config["route"].get("routes", []):
        route.pop("group_wait", None)
        route.pop("group_interval", None)
        if route.get("receiver") == "guard":
            route["repeat_interval"] = guard_repeat  # shipped: 1m
    for receiver in config["receivers"]:  # tell the people's receivers apart by path
        for hook in receiver.get("webhook_configs", []) if receiver["name"] != "guard" else []:
            hook["url"] = f"{webhook.url}/{receiver['name']}"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = start_process([binary, f"--config.file={tmp_path / 'alertmanager.yml'}",
                             f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address=", *([f"--web.config.file={auth[0]}"] if auth else [])],
                            tmp_path, "alertmanager")
    wait_http(_credentials(f"http://127.0.0.1:{port}/-/ready", auth))
    return f"127.0.0.1:{port}", process
