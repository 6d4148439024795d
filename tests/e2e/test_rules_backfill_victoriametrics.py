"""rules-backfill on VictoriaMetrics: promtool computes the rollups from VictoriaMetrics' query API over the
upgrade's history (accounting counters only, then both), vmctl imports the blocks, and vmalert running the
rule file then has the exact rolling window at once. This is the recipe docs/quotas.md gives for
VictoriaMetrics (vmalert's replay mode is not: it refuses the alerts' `query` templates)."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from otel_tokens.ops.rules import render_text
from otel_tokens.quota.file import parse_quotas
from tests.support import upgrade_history
from tests.support.binaries import require_binary
from tests.support.prometheus_stack import query, stop_processes
from tests.support.upgrade_history import STEP
from tests.support.victoria_stack import start_victoria, start_vmalert

ROOT = Path(__file__).resolve().parents[2]
QUOTAS = {"users": {"default": {"tokens": 10**9}}, "departments": {"default": {"tokens": 10**9}}}


def _on_a_terminal(command: list[str]) -> tuple[int, str]:
    """vmctl's snapshot reader draws a progress bar and fails without a terminal (as under CI): run it on a
    pseudo-terminal; returns (exit code, what it printed)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    with contextlib.suppress(OSError):  # EIO once the process has exited and closed its side
        while chunk := os.read(controller, 65536):
            output += chunk
    os.close(controller)
    return process.wait(timeout=600), output.decode(errors="replace")


def _all_searchable(url: str, selector: str, samples: int) -> None:
    """Wait until VictoriaMetrics answers with every imported sample: history imported a moment ago becomes
    searchable piece by piece, and a backfill run before that computes rollups from a partial history, wrong
    for good (what made this test fail one run in three before it waited)."""
    deadline, found = time.monotonic() + 120, 0.0
    while time.monotonic() < deadline:
        urllib.request.urlopen(f"{url}/internal/force_flush", timeout=60)
        result = query(url, f"sum(count_over_time({selector}[30h]))")
        found = float(result[0]["value"][1]) if result else 0.0
        if found >= samples:
            return
        time.sleep(1)
    raise AssertionError(f"VictoriaMetrics shows {found:.0f} of the {samples} samples imported for {selector}")


def _usage(url: str) -> dict[str, float]:
    return {r["metric"]["user_id"]: float(r["value"][1]) for r in query(url, "llm_quota:user_tokens:24h")}


def test_backfill_through_promtool_and_vmctl_makes_vmalerts_rolling_window_exact(tmp_path):
    victoria_bin, vmalert_bin = require_binary("victoria-metrics"), require_binary("vmalert")
    require_binary("promtool")
    vmctl = require_binary("vmctl")
    now = int(time.time())
    end = now // STEP * STEP - 15 * 60  # the app stopped 15 minutes ago: nothing in the raw partial
    start = end - 25 * 3600
    victoria, vm = start_victoria(tmp_path, victoria_bin, retention="30d")
    processes = [vm]
    try:
        history = upgrade_history.samples(start, end)
        body = upgrade_history.victoria_import_lines(history)
        urllib.request.urlopen(urllib.request.Request(f"{victoria}/api/v1/import", data=body, method="POST"),
                               timeout=120)
        _all_searchable(victoria, '{__name__=~"llm_token_usage_total|llm_quota_tokens_total"}', len(history))
        rules = tmp_path / "quotas.yml"
        rules.write_text(render_text(parse_quotas(QUOTAS, "q")))
        deployed = int(time.time())
        out = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "rules-backfill", "--rules", str(rules),
                              "--prometheus", victoria, "--start", str(start), "--end", str(deployed),
                              "--output", str(tmp_path / "blocks")],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        code, output = _on_a_terminal([vmctl, "prometheus", f"--prom-snapshot={tmp_path / 'blocks'}",
                                       f"--vm-addr={victoria}", "-s", "--vm-disable-progress-bar"])
        assert code == 0, output
        assert re.search(r"samples: [1-9]", output), output  # the snapshot held rollups
        urllib.request.urlopen(f"{victoria}/internal/force_flush", timeout=60)
        # vmalert will not start alerting rules without a notifier: an address where nothing listens
        _, alerting = start_vmalert(tmp_path, vmalert_bin, rules, victoria, "127.0.0.1:9", interval="2s")
        processes.append(alerting)
        deadline, got = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            got = _usage(victoria)
            if got in upgrade_history.truths(end):
                break
            time.sleep(1)
        assert got in upgrade_history.truths(end), (got, upgrade_history.truths(end))
        # a second backfill would write every bucket twice: refused, as on Prometheus
        again = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "rules-backfill", "--rules", str(rules),
                                "--prometheus", victoria, "--start", str(start), "--end", str(deployed), "--output",
                                str(tmp_path / "again")], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert again.returncode == 2 and "count twice" in again.stderr, again.stderr
    finally:
        stop_processes(processes)
