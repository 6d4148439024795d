"""rules-backfill against a real Prometheus and promtool: the upgrade to the per-principal counters (history in
the accounting counters only, then in both) gets an exact rolling window from the backfill at once."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from otel_tokens.ops.rules import render_text
from otel_tokens.quota.file import parse_quotas
from tests.support import upgrade_history
from tests.support.binaries import require_binary
from tests.support.prometheus_stack import query, start_prometheus
from tests.support.upgrade_history import STEP

ROOT = Path(__file__).resolve().parents[2]


QUOTAS = {"users": {"default": {"tokens": 10**9}}, "departments": {"default": {"tokens": 10**9}}}


def _usage(url: str, started: float) -> dict[str, float]:
    """llm_quota:user_tokens:24h once the parts group has written the window's parts since Prometheus
    started (within its first minute here) and the users' group has evaluated since."""
    deadline = time.monotonic() + 90
    while not query(url, f'timestamp(llm_quota:user_tokens:24h_parts{{part="boundary"}}) > {started}') \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # a few more evaluations
    return {r["metric"]["user_id"]: float(r["value"][1]) for r in query(url, "llm_quota:user_tokens:24h")}


def test_backfilled_rollups_make_the_rolling_window_exact_within_a_minute(tmp_path):
    prometheus, promtool = require_binary("prometheus"), require_binary("promtool")
    now = int(time.time())
    end = now // STEP * STEP - 15 * 60  # the app stopped 15 minutes ago: nothing in the raw partial
    start = end - 25 * 3600
    upgrade_history.write_openmetrics(tmp_path / "history.om", upgrade_history.samples(start, end))
    data = tmp_path / "prom-data"
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(tmp_path / "history.om"), str(data)],
                   check=True, capture_output=True)
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    rules = rules_dir / "quotas.yml"
    rendered = yaml.safe_load(render_text(parse_quotas(QUOTAS, "q")))
    for group in rendered["groups"]:
        # the parts group every minute, not 5: its first evaluation falls anywhere in its interval, twice here;
        # the window is the same at any interval up to 5 minutes (the promtool tests run it every 10 s)
        if group["name"].endswith("_parts"):
            group["interval"] = "1m"
    rules.write_text(yaml.safe_dump(rendered, sort_keys=False))
    deployed = int(time.time())
    started = time.time()
    url, prom = start_prometheus(tmp_path, prometheus, [], str(rules_dir / "*.yml"))
    try:
        window_start = now // 300 * 300 - 86400
        truth = {user: rate * ((end - window_start) // STEP) for user, rate in upgrade_history.RATES.items()}
        blind = _usage(url, started)
        assert all(blind.get(user, 0) < truth[user] / 10 for user in truth), (blind, truth)  # the blind first day
        out = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "rules-backfill", "--rules", str(rules),
                              "--prometheus", url, "--start", str(start), "--end", str(deployed),
                              "--output", str(tmp_path / "blocks")],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        assert "llm_quota:user_tokens:5m" in out.stderr and "llm_quota:department_tokens:1h" in out.stderr
    finally:
        prom.terminate()
        prom.wait(timeout=30)
    for block in (tmp_path / "blocks").iterdir():
        shutil.move(str(block), data / block.name)
    started = time.time()
    url, prom = start_prometheus(tmp_path, prometheus, [], str(rules_dir / "*.yml"))
    try:
        got = _usage(url, started)
        assert got in upgrade_history.truths(end), (got, upgrade_history.truths(end))
        # backfilling again would write every bucket a second time: refused, naming the first rollup held
        again = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "rules-backfill", "--rules", str(rules),
                                "--prometheus", url, "--start", str(start), "--end", str(deployed), "--output",
                                str(tmp_path / "again")], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert again.returncode == 2, again.stderr
        assert again.stderr.startswith(f"otel-tokens rules-backfill: --end: time: {deployed} is too late: ")
        assert "count twice" in again.stderr and not (tmp_path / "again").exists()
    finally:
        prom.terminate()
        prom.wait(timeout=30)
