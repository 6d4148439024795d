"""The guard's state rebuilt from the alerting stack's own list of firing alerts, at start and then
periodically: a restarted guard, a lost notification or a forged `resolved` is corrected within one
resync interval, not when Alertmanager next repeats the notification."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping

from ..guard_state import GuardState, parse_active
from ..prometheus_api import get_json

APPLIED, RACED, EMPTY = "applied", "raced", "empty"


def alerts_url(source: str) -> tuple[str, bool]:
    """(URL to read, whether it is Prometheus): a Prometheus .../api/v1/alerts URL as given, else an
    Alertmanager base URL whose active, unsilenced alerts (inhibited ones included) are read."""
    source = source.rstrip("/")
    if source.endswith("/api/v1/alerts"):
        return source, True
    return source + "/api/v2/alerts?active=true&silenced=false&inhibited=true&unprocessed=true", False


def resync(state: GuardState, source: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0,
           allow_empty: bool = True) -> str:
    """Replace the state with what `source` says is firing: APPLIED; RACED when a webhook landed during
    the read (it wins; nothing replaced); EMPTY when the answer is empty, the state is not and
    `allow_empty` is off."""
    url, prometheus = alerts_url(source)
    before = state.version
    _, body, _ = get_json(url, timeout=timeout, headers=headers)
    firing = parse_active(body, prometheus=prometheus)
    if not firing and not allow_empty and not state.empty():
        return EMPTY
    return APPLIED if state.replace(firing, unless_changed_since=before) else RACED


class Resync(threading.Thread):
    """Resyncs every `interval` seconds until stopped; failures are reported once per outage."""

    def __init__(self, state: GuardState, source: str, interval: float,
                 on_synced: Callable[[], None] | None = None) -> None:
        super().__init__(name="otel-tokens-guard-resync", daemon=True)
        self.state, self.source, self.interval, self.on_synced = state, source, interval, on_synced
        self.stopped = threading.Event()
        self.ok = True
        self._empty_once = False

    def once(self) -> bool:
        """One resync; never raises. An empty answer against a state that is not empty is applied only
        when the next resync says the same (a restarted Alertmanager knows no alerts for a while)."""
        try:
            outcome = RACED
            for _ in range(3):  # a webhook that lands during the read wins: read again
                outcome = resync(self.state, self.source, allow_empty=self._empty_once)
                if outcome != RACED:
                    break
            self._empty_once = outcome == EMPTY
            if outcome == APPLIED and self.on_synced is not None:
                self.on_synced()
        except Exception as error:
            if self.ok:
                print(f"otel-tokens guard: cannot read the firing alerts from {self.source}: {error}; "
                      "keeping the state from webhooks until it answers", file=sys.stderr, flush=True)
            self.ok = False
            return False
        if not self.ok:
            print(f"otel-tokens guard: {self.source} answers again", file=sys.stderr, flush=True)
        self.ok = True
        return outcome == APPLIED

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.once()
