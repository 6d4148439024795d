"""A real redis-server on 127.0.0.1 (free port, no persistence), started and stopped by the tests:
a plain one, or a one-node Redis Cluster holding all 16384 slots (scripts over two slots are refused
there, as on any cluster)."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.binaries import require_binary
from tests.support.prometheus_stack import free_port


class RedisServer:
    def __init__(self, cluster: bool = False, *extra: str) -> None:
        self.binary = require_binary("redis-server")
        self.cluster = cluster
        self.extra = extra
        self.port = free_port()
        while cluster and self.port > 55000:  # the cluster bus listens on port + 10000
            self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="otel-tokens-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self._dir.name, "--enable-debug-command", "local", *self.extra]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(Path(self._dir.name) / "nodes.conf")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    break
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        if self.cluster:
            client = self.client()
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            while client.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") < 0:
                time.sleep(0.05)
        return self

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """Stopped and started again on the same port: everything it held is gone, as after a crash."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
