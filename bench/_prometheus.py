"""A real Prometheus for the scale benches: a free port, start on a data directory, wait until ready.
The benches carry their own (they import no test code)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def binary(name: str) -> str:
    """Path of a Debian binary the bench needs, or exit naming the package (`make test` installs it)."""
    path = shutil.which(name)
    if path is None:
        sys.exit(f"{name} is not installed (Debian: apt-get install -y prometheus)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, log: str) -> None:
    deadline = time.monotonic() + 300
    while True:
        try:
            if urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"Prometheus did not start; see {log}")
        time.sleep(0.5)


def start(work: Path, retention: str = "15d") -> tuple[str, subprocess.Popen]:
    """Prometheus on a free port over `work`/prom-data, scraping nothing; returns (url, process)."""
    port = free_port()
    config = work / "prometheus.yml"
    config.write_text("global: {scrape_interval: 10s, evaluation_interval: 10s}\n")
    log = work / "prometheus.log"
    process = subprocess.Popen([binary("prometheus"), f"--config.file={config}",
                                f"--storage.tsdb.path={work / 'prom-data'}", f"--web.listen-address=127.0.0.1:{port}",
                                f"--storage.tsdb.retention.time={retention}"], stdout=log.open("w"),
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, str(log))
    return url, process
