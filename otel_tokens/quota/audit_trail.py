"""The guard's side of the audit log: each refusal (principal, scope, window, used, limit, the call's model; never
prompt text) and each quota reload's changed limits, appended by this process to the shared, hash-chained log
(otel_tokens/audit). A refusal only queues a tuple on the call path; a daemon thread writes what queued, one locked
append per batch. A runaway client refused thousands of times a second must not flood the log: past `RATE`
records a second the rest are counted and written as one `guard.refused.suppressed` record."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from otel_tokens.logs import log_once
from otel_tokens.quota.decision import Decision

RATE = 100  # records a second, per process
MAX_QUEUED = 10_000


class AuditTrail:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._queue: deque[tuple[str, Mapping[str, Any]]] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._second, self._written, self._suppressed = 0, 0, 0
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._queue.clear()
        self._thread, self._lock, self._wake = None, threading.Lock(), threading.Event()

    def refused(self, decision: Decision, model: str, app: str) -> None:
        """A refusal by quota (not fail_closed: no one's quota decided it)."""
        if self.path is None:
            return
        entry = decision.entry
        self.event("guard.refused", {
            "scope": decision.scope, "principal": decision.principal, "window": decision.window,
            "kind": str(entry.get("quota", "")), "used": entry.get("usage"), "limit": entry.get("limit"),
            "reserved": entry.get("reserved"), "model": model, "app": app})

    def event(self, name: str, fields: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        second = int(time.monotonic())
        if second != self._second:
            self._second, self._written = second, 0
        if self._written >= RATE or len(self._queue) >= MAX_QUEUED:
            self._suppressed += 1
            return
        self._written += 1
        self._queue.append((name, fields))
        if self._thread is None:
            self._start()
        self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="otel-tokens-audit", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Writes what is queued (and the count of what was suppressed); a failure is logged once and the batch
        dropped: the audit log never holds up or breaks the calls."""
        if self.path is None:
            return
        batch = []
        while self._queue:
            batch.append(self._queue.popleft())
        if self._suppressed:
            batch.append(("guard.refused.suppressed", {"count": self._suppressed, "rate": RATE}))
            self._suppressed = 0
        if not batch:
            return
        try:
            from otel_tokens.audit import AuditLog

            AuditLog(self.path).append_many(batch)
        except Exception as error:
            log_once(f"audit:{self.path}", "otel-tokens: cannot write the audit log %s (%s); %d records dropped",
                     self.path, error, len(batch))
