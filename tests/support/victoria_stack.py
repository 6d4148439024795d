"""Real VictoriaMetrics and vmalert processes for tests (Debian `victoria-metrics`): free ports,
start, wait; the flags are the ones the README's VictoriaMetrics setup names."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.support.prometheus_stack import free_port, start_process, wait_http

# VictoriaMetrics hides samples newer than this from queries (default 30 s, for slow writers). The
# rules' chained rollups read what vmalert wrote back a moment ago, so the tests lower it.
LATENCY_OFFSET = "1s"


def start_victoria(tmp_path: Path, binary: str, latency_offset: str = LATENCY_OFFSET
                   ) -> tuple[str, subprocess.Popen[Any]]:
    """Single-node VictoriaMetrics on a free port; returns (url, process). Prometheus remote-writes to
    `{url}/api/v1/write`; PromQL/MetricsQL queries go to `{url}/api/v1/query`."""
    port = free_port()
    process = start_process([binary, f"-storageDataPath={tmp_path / 'vm-data'}", f"-httpListenAddr=127.0.0.1:{port}",
                             f"-search.latencyOffset={latency_offset}", "-search.disableCache",
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
