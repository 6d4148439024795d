"""`otel-tokens guard` as the CLI wires it, in the test process: the endpoint, following the given
rulers' /api/v1/alerts, with Alertmanager's webhook prompting a re-read."""

from __future__ import annotations

import threading

from otel_tokens.config.settings import BLOCK_HOLD
from otel_tokens.ops.alert_endpoint import serve
from otel_tokens.ops.alert_resync import Resync
from otel_tokens.quota.alert.ruler import Rulers
from otel_tokens.quota.alert.state import AlertState


class GuardEndpoint:
    def __init__(self, token: str, stale_after: float = 60.0) -> None:
        self.server = serve("127.0.0.1", 0, token=token)
        self.server.app.require_sync(stale_after)
        self.resync: Resync | None = None
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def state(self) -> AlertState:
        return self.server.state

    def follow(self, rulers: list[str], interval: float = 1.0, hold: float = BLOCK_HOLD) -> None:
        """Start reading the rulers, as `otel-tokens guard --ruler ...` does."""
        self.resync = Resync(self.state, Rulers(rulers), interval, hold, on_synced=self.server.app.synced)
        self.server.app.on_webhook = self.resync.prompt
        self.resync.start()

    def shutdown(self) -> None:
        if self.resync is not None:
            self.resync.stopped.set()
            self.resync.prompt()
        self.server.shutdown()
