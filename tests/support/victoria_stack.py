"""Real VictoriaMetrics and vmalert processes for tests (Debian `victoria-metrics`): free ports,
start, wait; the flags are the ones docs/operations.md's VictoriaMetrics setup names."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.prometheus_stack import free_port, start_process, wait_http

# VictoriaMetrics hides samples newer than this from queries (default 30 s, for slow writers). The
# rules' chained rollups read what vmalert wrote back a moment ago, so the tests lower it.
LATENCY_OFFSET = "1s"


def start_victoria(tmp_path: Path, binary: str, latency_offset: str = LATENCY_OFFSET, retention: str = "1"
                   ) -> tuple[str, subprocess.Popen[Any]]:
    """Single-node VictoriaMetrics on a free port; returns (url, process). Prometheus remote-writes to
    `{url}/api/v1/write`; PromQL/MetricsQL queries go to `{url}/api/v1/query`."""
    port = free_port()
    process = start_process([binary, f"-storageDataPath={tmp_path / 'vm-data'}", f"-httpListenAddr=127.0.0.1:{port}",
                             f"-search.latencyOffset={latency_offset}", "-search.disableCache",
                             f"-retentionPeriod={retention}",
                             "-loggerLevel=WARN"], tmp_path, "victoria-metrics")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health")
    return url, process


def start_vmalert(tmp_path: Path, binary: str, rule_file: Path, victoria: str, alertmanager: str | None,
                  interval: str = "1s") -> tuple[str, subprocess.Popen[Any]]:
    """vmalert evaluating `rule_file` against VictoriaMetrics, writing recorded series and alert state
    back to it, notifying `alertmanager` (host:port); returns (url, process)."""
    port = free_port()
    args = [binary, f"-rule={rule_file}", f"-datasource.url={victoria}", f"-remoteWrite.url={victoria}",
            f"-remoteRead.url={victoria}", f"-evaluationInterval={interval}", "-remoteWrite.flushInterval=1s",
            f"-httpListenAddr=127.0.0.1:{port}", "-loggerLevel=WARN"]
    if alertmanager:
        args.append(f"-notifier.url=http://{alertmanager}")
    process = start_process(args, tmp_path, "vmalert")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/-/healthy")
    return url, process


# New York: the departments' month through the zone's offset table (a step function with DST changes), on both
QUOTAS = {"timezone": "America/New_York",
          "users": {"default": {"24h": {"tokens": 100_000}, "day": {"tokens": 100_000}},
                    "overrides": {"alice": {"24h": {"tokens": 1000}, "day": {"tokens": 1050}}}},
          "departments": {"default": {"tokens": 1_000_000}, "overrides": {"support": {"tokens": 1500}}},
          "apps": {"default": {"tokens": 1_000_000, "cost": 100}}}  # the app rules on both engines, never crossed
APP = "alert-app"  # tests/support/alert_app.py's service.name: what the dashboards' app variable lists
GUARD_TOKEN = "test-guard-token-0123456789abcdef"
BINARIES = ("prometheus", "prometheus-alertmanager", "victoria-metrics", "vmalert")


class VictoriaStack:
    """The app (tests/support/alert_app.py) scraped by Prometheus, which runs the rendered rules and
    remote-writes what it scraped to VictoriaMetrics, where vmalert runs the same rule file and
    notifies the shipped Alertmanager. Started in the background when the test is collected (the
    5-minute buckets of the rules are written once per 5 minutes: by the time the test runs, the first
    traffic has usually been bucketed on both engines)."""

    def __init__(self) -> None:
        self.started = False
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.processes: list[subprocess.Popen[Any]] = []
        self.lock = threading.Lock()
        self.crossed: dict[str, float] = {}
        self.values: dict[str, Any] = {}

    def start_background(self) -> None:
        if not self.started:
            self.started = True
            threading.Thread(target=self._start, name="victoria-stack", daemon=True).start()

    def wait(self, timeout: float = 240.0) -> VictoriaStack:
        self.start_background()
        if not self.ready.wait(timeout):
            raise AssertionError(f"the VictoriaMetrics stack did not start within {timeout}s")
        if self.error is not None:
            raise AssertionError(f"the VictoriaMetrics stack failed to start: {self.error!r}") from self.error
        return self

    def _start(self) -> None:
        try:
            self._launch()
        except BaseException as exc:  # reported by wait(), in the test
            self.error = exc
        finally:
            self.ready.set()

    def _launch(self) -> None:
        import yaml

        from otel_tokens.ops.rules import render_text
        from otel_tokens.quota.file import parse_quotas
        from otel_tokens.quota.grants.model import Grant
        from tests.support.guard_endpoint import GuardEndpoint
        from tests.support.prometheus_stack import Webhook, start_prometheus, start_shipped_alertmanager

        paths = {name: shutil.which(name) for name in BINARIES}
        if not all(paths.values()):
            raise FileNotFoundError(f"missing binaries: {[n for n, p in paths.items() if not p]}")
        tmp = Path(tempfile.mkdtemp(prefix="otel-tokens-victoria-"))
        self.values["tmp"] = tmp
        self.values["launched_at"] = time.time()  # wall clock: the hour-aligned rules read hour boundaries
        app_port = free_port()
        root = Path(__file__).resolve().parents[2]
        self.app = subprocess.Popen([sys.executable, "-m", "tests.support.alert_app", str(app_port)], cwd=root,
                                    text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=open(tmp / "app.log", "w"))
        self.processes.append(self.app)
        assert self.app.stdout is not None and self.app.stdout.readline().strip() == "ready"
        self.webhook = Webhook()
        token_file = tmp / "guard-token"
        token_file.write_text(GUARD_TOKEN + "\n")
        self.guard = GuardEndpoint(GUARD_TOKEN)
        am, process = start_shipped_alertmanager(tmp, str(paths["prometheus-alertmanager"]), self.webhook,
                                                 self.guard.url, token_file)
        self.processes.append(process)
        rules = tmp / "rules"
        rules.mkdir()
        quota_file = tmp / "quotas.yaml"
        quota_file.write_text(yaml.safe_dump(QUOTAS))
        self.quotas = parse_quotas(QUOTAS, str(quota_file))
        self.rule_file = rules / "quotas.yml"
        # grants in force on both engines (bob's 24 h, research's month): their series and the dashboards' grant
        # panels compared with data, not only run
        now = time.time()
        grants = [Grant("g-0000000000b0", "user", "bob", "24h", 1000, None, now - 60, now + 86400, "test", "ops", now),
                  Grant("g-0000000000b1", "department", "research", "month", 5000, None, now - 60, now + 86400,
                        "test", "ops", now)]
        rendered = yaml.safe_load(render_text(self.quotas, for_="1s", grants=grants, now=now))
        for group in rendered["groups"]:
            # the window's parts every minute, not 5, on both engines: each engine's first evaluation of that group
            # falls anywhere in its interval, and until then the window lags (the fallback); the window is the same
            # at any parts interval up to 5 minutes (the promtool tests run it every 10 s)
            if group["name"].endswith("_parts"):
                group["interval"] = "1m"
        self.rule_file.write_text(yaml.safe_dump(rendered, sort_keys=False))
        self.victoria, process = start_victoria(tmp, str(paths["victoria-metrics"]))
        self.processes.append(process)
        self.vmalert, process = start_vmalert(tmp, str(paths["vmalert"]), self.rule_file, self.victoria, am)
        self.processes.append(process)
        self.guard.follow([self.vmalert])  # alert mode believes the ruler, here vmalert
        # Prometheus evaluates the same rules (without notifying: every notification is vmalert's)
        self.prometheus, process = start_prometheus(tmp, str(paths["prometheus"]), [f"127.0.0.1:{app_port}"],
                                                    str(rules / "*.yml"), remote_write=f"{self.victoria}/api/v1/write")
        self.processes.append(process)
        self.alertmanager = f"http://{am}"
        self.generate("bob", "research", 3)
        self.crossed["warning"] = self.generate("alice", "support", 9)  # 900 of 1000: the warning

    def generate(self, user: str, department: str, calls: int) -> float:
        with self.lock:
            assert self.app.stdin is not None and self.app.stdout is not None
            self.app.stdin.write(f"{user} {department} {calls}\n")
            self.app.stdin.flush()
            assert self.app.stdout.readline().strip() == "done"
            return time.monotonic()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        if hasattr(self, "webhook"):
            self.webhook.server.shutdown()
        if hasattr(self, "guard"):
            self.guard.shutdown()
        if "tmp" in self.values:
            shutil.rmtree(self.values["tmp"], ignore_errors=True)


EARLY = VictoriaStack()
