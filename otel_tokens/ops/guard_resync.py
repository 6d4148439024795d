"""The guard's state rebuilt from the alerting stack's own list of firing alerts, at start and then
periodically: a restarted guard, a lost notification or a forged `resolved` is corrected within one
resync interval, not when Alertmanager next repeats the notification."""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping

from ..guard_state import GuardState, PayloadError, parse_active
from ..prometheus_api import get_json


def alerts_url(source: str) -> tuple[str, bool]:
    """(URL to read, whether it is Prometheus): a Prometheus .../api/v1/alerts URL as given, else an
    Alertmanager base URL whose active, unsilenced alerts (inhibited ones included) are read."""
    source = source.rstrip("/")
    if source.endswith("/api/v1/alerts"):
        return source, True
    return source + "/api/v2/alerts?active=true&silenced=false&inhibited=true&unprocessed=true", False


def resync(state: GuardState, source: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> int:
    """Replace the state with what `source` says is firing; the number of quota alerts firing."""
    url, prometheus = alerts_url(source)
    _, body, _ = get_json(url, timeout=timeout, headers=headers)
    firing = parse_active(body, prometheus=prometheus)
    state.replace(firing)
    return len(firing)


class Resync(threading.Thread):
    """Resyncs every `interval` seconds until stopped; failures are reported once per outage."""

    def __init__(self, state: GuardState, source: str, interval: float) -> None:
        super().__init__(name="otel-tokens-guard-resync", daemon=True)
        self.state, self.source, self.interval = state, source, interval
        self.stopped = threading.Event()
        self.ok = True

    def once(self) -> bool:
        try:
            resync(self.state, self.source)
        except (OSError, ValueError, PayloadError) as error:
            if self.ok:
                print(f"otel-tokens guard: cannot read the firing alerts from {self.source}: {error}; "
                      "keeping the state from webhooks until it answers", file=sys.stderr, flush=True)
            self.ok = False
            return False
        if not self.ok:
            print(f"otel-tokens guard: {self.source} answers again", file=sys.stderr, flush=True)
        self.ok = True
        return True

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.once()
