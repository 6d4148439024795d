"""Several processes: a gunicorn server with two workers, scraped by a real Prometheus. Each
process's series are its own, the sums equal the ground truth, and a worker killed and restarted
mid-window neither loses nor double-counts tokens in the quota rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from otel_tokens.ops.rules import render_text
from otel_tokens.quota.file import parse_quotas
from tests.support.binaries import require_binary
from tests.support.prometheus_stack import free_port, free_port_block, query, start_prometheus, wait_http
from tests.support.workers_app import TOKENS_PER_REQUEST

ROOT = Path(__file__).resolve().parents[2]


def _wait_for(url: str, promql: str, expected: dict[str, float], timeout: float = 60) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        got = {r["metric"].get("user_id", ""): float(r["value"][1]) for r in query(url, promql)}
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def test_multi_worker_server_sums_and_a_worker_restart(tmp_path):
    prometheus = require_binary("prometheus")
    port, base = free_port(), free_port_block(5)  # workers bind base + their age (1..5)
    env = {**os.environ, "METRICS_BASE_PORT": str(base)}
    server = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-w", "2",
                               "-c", "tests/support/workers_app.py", "-b", f"127.0.0.1:{port}",
                               "--graceful-timeout", "1", "tests.support.workers_app:app"],
                              cwd=ROOT, env=env, stdout=open(tmp_path / "gunicorn.log", "w"), stderr=subprocess.STDOUT)
    prom = None
    try:
        quotas = {"users": {"default": {"tokens": 1_000_000}}}
        rules = tmp_path / "rules"
        rules.mkdir()
        (rules / "quotas.yml").write_text(render_text(parse_quotas(quotas, "q"), for_="1s"))
        targets = [f"127.0.0.1:{base + age}" for age in range(1, 6)]
        url, prom = start_prometheus(tmp_path, prometheus, targets, str(rules / "*.yml"))
        wait_http(f"http://127.0.0.1:{port}/?user=warmup", timeout=120)

        def request(user: str) -> int:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/?user={user}", timeout=60) as response:
                return int(response.read())

        with ThreadPoolExecutor(4) as pool:
            pids = list(pool.map(request, ["alice"] * 20 + ["bob"] * 10))
        assert len(set(pids)) == 2, "both workers served requests"
        truth = {"alice": 20 * TOKENS_PER_REQUEST, "bob": 10 * TOKENS_PER_REQUEST}
        total = 'sum by (user_id) (llm_token_usage_total{user_id=~"alice|bob"})'
        assert _wait_for(url, total, truth) == truth
        per_process = query(url, 'count(llm_token_usage_total{user_id="alice",gen_ai_token_type="input"})')
        assert float(per_process[0]["value"][1]) == 2  # one series per worker: distinct instances
        quota = 'llm_quota:user_tokens:24h{user_id=~"alice|bob"}'
        assert _wait_for(url, quota, truth) == truth

        os.kill(pids[0], signal.SIGKILL)  # a worker dies mid-window; gunicorn starts a new one
        time.sleep(3)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(request, ["alice"] * 10))
        truth["alice"] += 10 * TOKENS_PER_REQUEST
        got = _wait_for(url, quota, truth, timeout=90)
        assert got == truth, f"quota usage after the restart: {got}, ground truth {truth}"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=10)
