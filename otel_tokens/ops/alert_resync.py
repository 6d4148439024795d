"""The guard's state follows the rule engines' own alert state (ruler.py): read at start, every
interval, and soon after Alertmanager's webhook says something changed. The webhook's content is never
applied: Alertmanager's API takes alerts and resolutions from anyone who reaches it."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from otel_tokens.config.settings import BLOCK_HOLD
from otel_tokens.quota.alert.ruler import Rulers
from otel_tokens.quota.alert.state import AlertState

MIN_GAP = 1.0  # seconds between two reads however often the webhook prompts: a flood of posts is one read


def sync(state: AlertState, rulers: Rulers, hold: float = BLOCK_HOLD) -> list[str]:
    """One read of the rulers into `state`; raises when no ruler answers. Returns why blocks were held
    (empty when the answer was applied as it is)."""
    answer = rulers.read(held=state.firing())
    state.follow(answer.firing, answer.may_lift, hold)
    return answer.held_because


class Resync(threading.Thread):
    """Reads the rulers every `interval` seconds and when prompted; failures are reported once per outage."""

    def __init__(self, state: AlertState, rulers: Rulers, interval: float, hold: float = BLOCK_HOLD,
                 on_synced: Callable[[], None] | None = None) -> None:
        super().__init__(name="otel-tokens-guard-resync", daemon=True)
        self.state, self.rulers, self.interval, self.hold, self.on_synced = state, rulers, interval, hold, on_synced
        self.stopped = threading.Event()
        self._prompted = threading.Event()
        self.ok = True
        self._held = ""

    def prompt(self) -> None:
        """Something changed (Alertmanager's webhook): read the rulers soon, at most once a MIN_GAP."""
        self._prompted.set()

    def once(self) -> bool:
        """One read; never raises."""
        try:
            held = sync(self.state, self.rulers, self.hold)
        except Exception as error:
            if self.ok:
                print(f"otel-tokens guard: cannot read the firing alerts from {self.rulers}: {error}; keeping "
                      "the last state (served as stale once --stale-after passes)", file=sys.stderr, flush=True)
            self.ok = False
            return False
        if not self.ok:
            print(f"otel-tokens guard: {self.rulers} answers again", file=sys.stderr, flush=True)
        reason = "; ".join(held)
        if reason and not self._held:  # once per episode, not at every read
            print(f"otel-tokens guard: keeping the blocks the answer left out: {reason}", file=sys.stderr,
                  flush=True)
        self.ok, self._held = True, reason
        if self.on_synced is not None:
            self.on_synced()
        return True

    def run(self) -> None:
        self.once()
        while not self.stopped.is_set():
            self._prompted.wait(self.interval)
            self._prompted.clear()
            if self.stopped.is_set():
                return
            started = time.monotonic()
            self.once()
            self.stopped.wait(max(0.0, MIN_GAP - (time.monotonic() - started)))
