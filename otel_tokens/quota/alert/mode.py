"""Quota enforcement driven by the alerting stack, so alerts and enforcement share one source of truth.

The `otel-tokens guard` endpoint (ops/alert_endpoint.py) follows the rule engines' own alert state and
answers which principals are over which quota (GET /state). In the app, an `AlertMode` polls that state (or
a ruler's `/api/v1/alerts` directly, ruler.py) in a background thread; before an instrumented call it
does one dictionary lookup: `reject` raises QuotaExceededError (map it to HTTP 429), `downgrade`
rewrites the model. When the state source cannot be reached the last state is enforced for
`stale_grace`; after that the guard fails open (logged once, counted in
`llm.guard.decisions{decision="fail_open"}`) unless `fail_closed` is set, except for the principals the
last state blocked: they stay blocked for `block_hold` (a flood of connections that starves the polls
must not unblock anyone).
"""

from __future__ import annotations

import fnmatch
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from otel_tokens.config.settings import GuardSettings
from otel_tokens.logs import log_once, logger
from otel_tokens.prometheus_api import get_json
from otel_tokens.quota import vocabulary
from otel_tokens.quota.alert.ruler import ALERTS_PATH, Rulers
from otel_tokens.quota.alert.state import AlertState
from otel_tokens.quota.decision import Decision

_SEVERITY = vocabulary.SEVERITY_RANK


# --- in the app: a cached copy and a dictionary lookup per call ------------------------------------
class AlertMode:
    def __init__(self, settings: GuardSettings, on_decision: Any = None) -> None:
        self.settings = settings
        self.alert = settings.alert
        # section (users, departments, apps) -> principal -> its worst alert entry
        self._over: dict[str, dict[str, dict[str, Any]]] = {scope.section: {} for scope in vocabulary.SCOPES}
        self._tag = ""  # the version of the state we hold, as the guard endpoint names it
        self._stale_after = self.alert.stale_grace + self.alert.poll_interval + 2 * 5.0 + 1.0
        self.healthy = False  # until the first state arrives
        self.last_update = 0.0
        self._on_decision = on_decision
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # a ruler's /api/v1/alerts read directly: its answers merged into a state of our own, so a ruler
        # restart lifts no block (ruler.py)
        self._rulers = Rulers(self.alert.source) if self.alert.enabled and ALERTS_PATH in self.alert.source else None
        self._ruler_state = AlertState()

    @property
    def enabled(self) -> bool:
        return self.alert.enabled

    def start(self) -> None:
        """Polls in a background thread, the first time at once: start-up never waits on the state
        source. Until the first state arrives the guard acts as with the source down (fail open or closed)."""
        if not self.alert.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="otel-tokens-guard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        self.refresh()
        while not self._stop.wait(self.alert.poll_interval):
            self.refresh()

    def _read(self) -> tuple[int, Any]:
        if self._rulers is not None:
            answer = self._rulers.read(held=self._ruler_state.firing())
            self._ruler_state.follow(answer.firing, answer.may_lift, self.alert.block_hold)
            if answer.held_because:
                log_once(f"guard-held:{self.alert.source}", "otel-tokens: keeping the blocks the rule "
                         "engine's answer left out: %s", "; ".join(answer.held_because))
            return 200, self._ruler_state.snapshot()
        source = self.alert.source
        headers = {"Authorization": f"Bearer {self.alert.token}"} if self.alert.token else {}
        url = source
        if self._tag:  # the guard endpoint: only what changed since our version
            url += ("&" if "?" in source else "?") + urllib.parse.urlencode({"since": self._tag})
            headers["If-None-Match"] = f'"{self._tag}"'
        status, body, _ = get_json(url, timeout=min(5.0, max(1.0, self.alert.poll_interval)), headers=headers)
        return status, body

    def refresh(self) -> None:
        source = self.alert.source
        try:
            status, body = self._read()
            if status == 200:
                self._apply(body)
            if not self.healthy and self.last_update:  # not the first answer: back after an outage
                logger.warning("otel-tokens: quota state from %s is reachable again", source)
            self.healthy = True
            self.last_update = time.monotonic()
        except Exception as error:
            self._tag = ""  # the next answer must be whole
            if self.last_update and time.monotonic() - self.last_update < self.alert.stale_grace:
                log_once(f"guard-stale:{source}", "otel-tokens: cannot read the quota state from %s (%s); "
                         "enforcing the last state for up to %.0f s", source, error, self.alert.stale_grace)
                return
            if self.healthy or not self.last_update:
                log_once(f"guard-down:{source}", "otel-tokens: cannot read the quota state from %s (%s); the guard "
                         "%s until it is back", source, error,
                         "rejects every call" if self.settings.fail_closed else "lets calls through (fail open)")
            self.healthy = False

    def _apply(self, body: Any) -> None:
        """A new state, in time proportional to what changed when the endpoint sends changes only."""
        if not isinstance(body, Mapping):
            raise ValueError("the quota state is not a JSON object")
        changes = body.get("changes")
        # a guard endpoint older than the app scope sends no `apps`: none over quota
        optional = {vocabulary.APP.section}
        if isinstance(changes, Mapping):  # checked whole before any is applied
            updates = [(section, _entries(changes.get(section) or {}, allow_none=True)) for section in self._over]
            for section, entries in updates:
                current = self._over[section]
                for name, entry in entries.items():
                    if entry is None:
                        current.pop(name, None)
                    else:
                        current[name] = entry
        else:
            self._over = {section: _entries(body.get(section, {} if section in optional else None), allow_none=False)
                          for section in self._over}
            if body.get("truncated"):
                log_once(f"guard-truncated:{self.alert.source}", "otel-tokens: the quota state from %s left "
                         "out %s principals over quota (its cap); they are not refused", self.alert.source,
                         body.get("truncated"))
        version = body.get("version")
        self._tag = version if isinstance(version, str) and self._rulers is None else ""

    def decide(self, model: str | None, attribution: Mapping[str, str]) -> Decision | None:
        """None (the common case: allowed), or what to do with this call."""
        if self.healthy and time.monotonic() - self.last_update > self._stale_after:
            self.healthy = False  # no answer for longer than a poll can take: a refresh is stuck
        if not self.healthy:
            held = None
            if self.last_update and time.monotonic() - self.last_update < self.alert.block_hold:
                held = self._from_state(model, attribution)  # what the last good state blocked stays blocked
            return held or Decision(vocabulary.FAIL_CLOSED if self.settings.fail_closed else vocabulary.FAIL_OPEN,
                                    entry={"source": self.alert.source})
        return self._from_state(model, attribution)

    def _from_state(self, model: str | None, attribution: Mapping[str, str]) -> Decision | None:
        state = self._over
        if not any(state.values()):
            return None
        for rule in self.settings.rules:
            scope = vocabulary.BY_NAME[rule.scope]
            over = state[scope.section]
            principal = attribution.get(scope.attribute)
            entry = over.get(principal) if principal else None
            if entry is None or _SEVERITY.get(entry.get("severity", ""), 0) < _SEVERITY[rule.level]:
                continue
            if rule.action in (vocabulary.REJECT, vocabulary.FIT):  # no remaining budget known here to fit to
                return Decision(vocabulary.REJECT, rule.scope, principal, entry)  # type: ignore[arg-type]
            target = next((cheap for glob, cheap in rule.downgrade if model and fnmatch.fnmatch(model, glob)), None)
            if target is not None and target.moves(model):
                return Decision(vocabulary.DOWNGRADE, rule.scope, principal, entry,  # type: ignore[arg-type]
                                target.model, target.endpoint)
        return None


def _entries(value: Any, allow_none: bool) -> dict[str, Any]:
    """{principal: entry} from a state answer, each entry checked (a severity we know); ValueError otherwise."""
    if not isinstance(value, Mapping):
        raise ValueError("the quota state has no users and departments")
    out: dict[str, Any] = {}
    for name, entry in value.items():
        if entry is None and allow_none:
            out[str(name)] = None
        elif isinstance(entry, Mapping) and isinstance(entry.get("severity"), str) and entry["severity"] in _SEVERITY:
            out[str(name)] = dict(entry)
        else:
            raise ValueError(f"the quota state has an unreadable entry for {str(name)[:64]!r}")
    return out
