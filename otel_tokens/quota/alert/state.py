"""Who is over which quota, as the alerting stack says: the state `otel-tokens guard` keeps and serves,
and the in-app guard reads back.

Alert payloads arrive from outside (Alertmanager webhooks, its API, Prometheus's alerts), so each is
validated whole before any of it is applied: a bad entry changes nothing. The state keeps a version
and a bounded log of what changed, so a poller that has version V receives only the changes since V.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from otel_tokens.quota import vocabulary

_SEVERITY = vocabulary.SEVERITY_RANK
MAX_ID = 256  # characters of a principal's name
MAX_TEXT = 128  # characters of an annotation kept (usage, limit, percent)
MAX_ALERTS = 10_000  # alerts in one payload
MAX_PRINCIPALS = 200_000  # over quota at once; a payload that would go past it is refused whole
LOG_SIZE = 10_000  # changes kept for pollers that ask for changes only

Key = tuple[str, str, str, str, str]  # (scope name, principal, quota kind, window, severity)
Entry = dict[str, Any]


class PayloadError(ValueError):
    """An alert payload that is not what Alertmanager or Prometheus sends; says where."""


def _text(value: Any, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"{where} is not a string")
    return value[:limit]


def _labels(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise PayloadError(f"{where} is not a mapping")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise PayloadError(f"{where}.{str(key)[:40]} is not a string")
    return dict(value)


def _quota_alert(alert: Any, where: str) -> tuple[Key, Entry] | None:
    """(key, entry) of a quota alert; None for any other alert; PayloadError if malformed."""
    if not isinstance(alert, Mapping):
        raise PayloadError(f"{where} is not a mapping")
    labels = _labels(alert.get("labels", {}), f"{where}.labels")
    annotations = _labels(alert.get("annotations", {}) or {}, f"{where}.annotations")
    scope_kind = vocabulary.ALERTS.get(labels.get("alertname", ""))
    if scope_kind is None:
        return None
    scope = scope_kind[0]
    principal, severity = labels.get(scope.label, ""), labels.get("severity", "")
    if not principal or severity not in _SEVERITY:
        return None
    if len(principal) > MAX_ID:
        raise PayloadError(f"{where}.labels.{scope.label} is longer than {MAX_ID} characters")
    quota = _text(labels.get("quota", ""), f"{where}.labels.quota", MAX_TEXT)
    # a principal may be over several windows at once (a day and a month): each alert its own block
    window = _text(labels.get("window", scope.window), f"{where}.labels.window", MAX_TEXT)
    entry = {"severity": severity, "window": window,
             "quota": quota, **{k: annotations[k][:MAX_TEXT] if k in annotations else None
                                for k in ("usage", "limit", "percent")}}
    return (scope.name, principal, quota, window, severity), entry


def parse_webhook(payload: Any) -> list[tuple[Key, Entry | None]]:
    """An Alertmanager webhook (version 4): (key, entry) for each firing quota alert, (key, None) for
    each resolved one. Raises PayloadError naming the first bad field; nothing is half-read."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("alerts"), list):
        raise PayloadError("the body is not a webhook payload: no 'alerts' list")
    alerts = payload["alerts"]
    if len(alerts) > MAX_ALERTS:
        raise PayloadError(f"alerts holds {len(alerts)} entries, more than {MAX_ALERTS}")
    changes: list[tuple[Key, Entry | None]] = []
    for i, alert in enumerate(alerts):
        found = _quota_alert(alert, f"alerts[{i}]")
        status = alert.get("status")
        if status not in ("firing", "resolved"):
            raise PayloadError(f"alerts[{i}].status is {str(status)[:40]!r}, not firing or resolved")
        if found is not None:
            changes.append((found[0], found[1] if status == "firing" else None))
    return changes


def parse_active(alerts: Any, prometheus: bool = False) -> dict[Key, Entry]:
    """Every firing quota alert of Alertmanager's GET /api/v2/alerts (a list), or of Prometheus's
    GET /api/v1/alerts (`prometheus`: {"data": {"alerts": [...]}}, state "firing" only)."""
    if prometheus:
        data = alerts.get("data") if isinstance(alerts, Mapping) else None
        alerts = data.get("alerts") if isinstance(data, Mapping) else None
        if not isinstance(alerts, list):
            raise PayloadError("the answer is not a rule engine's alert list (Prometheus or vmalert "
                               "/api/v1/alerts: data.alerts); Alertmanager is not a source")
    if not isinstance(alerts, list):
        raise PayloadError("the answer is not a list of alerts")
    firing: dict[Key, Entry] = {}
    for i, alert in enumerate(alerts):
        if prometheus and isinstance(alert, Mapping) and alert.get("state") != "firing":
            continue
        found = _quota_alert(alert, f"alerts[{i}]")
        if found is not None:
            firing[found[0]] = found[1]
    return firing


class AlertState:
    """Firing quota alerts; `view` is their worst entry per principal, what pollers see."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (kind, name) -> (quota, window, severity) -> entry
        self._firing: dict[tuple[str, str], dict[tuple[str, str, str], Entry]] = {}
        self._confirmed: dict[Key, float] = {}  # when a ruler last said each alert fires (monotonic)
        self._view: dict[str, dict[str, Entry]] = {scope.section: {} for scope in vocabulary.SCOPES}
        self.epoch = os.urandom(4).hex()  # a restarted guard's versions are not the old one's
        self.version = 0
        self._log: deque[tuple[int, str, str, Entry | None]] = deque(maxlen=LOG_SIZE)
        self._complete_after = 0  # the log holds every change of the versions after this one

    def apply(self, changes: list[tuple[Key, Entry | None]]) -> None:
        """PayloadError, and no change, if it would hold more than MAX_PRINCIPALS."""
        with self._lock:
            new = {(k[0], k[1]) for k, entry in changes if entry is not None} - set(self._firing)
            if len(self._firing) + len(new) > MAX_PRINCIPALS:
                raise PayloadError(f"the state would hold more than {MAX_PRINCIPALS} principals over quota")
            touched = set()
            for (kind, principal, quota, window, severity), entry in changes:
                who = (kind, principal)
                alerts = self._firing.get(who)
                if entry is None:
                    if alerts is not None:
                        alerts.pop((quota, window, severity), None)
                        if not alerts:
                            del self._firing[who]
                else:
                    self._firing.setdefault(who, {})[quota, window, severity] = entry
                touched.add(who)
            self._refresh(touched)

    def update(self, payload: Any) -> None:
        """A webhook payload, validated whole (PayloadError) before any of it is applied."""
        self.apply(parse_webhook(payload))

    def replace(self, firing: dict[Key, Entry], unless_changed_since: int | None = None) -> bool:
        """The whole firing set, as the alerting stack lists it (resync after a restart, a lost or forged
        notification); not applied (False) if the version moved past `unless_changed_since` meanwhile."""
        grouped: dict[tuple[str, str], dict[tuple[str, str, str], Entry]] = {}
        for (kind, principal, quota, window, severity), entry in firing.items():
            grouped.setdefault((kind, principal), {})[quota, window, severity] = entry
        if len(grouped) > MAX_PRINCIPALS:
            raise PayloadError(f"more than {MAX_PRINCIPALS} principals over quota")
        with self._lock:
            if unless_changed_since is not None and self.version != unless_changed_since:
                return False
            touched = set(self._firing) | set(grouped)
            self._firing = grouped
            self._refresh(touched)
            return True

    def firing(self) -> dict[Key, Entry]:
        with self._lock:
            return {(scope, principal, *alert): entry for (scope, principal), alerts in self._firing.items()
                    for alert, entry in alerts.items()}

    def follow(self, firing: dict[Key, Entry], may_lift: bool, hold: float, now: float | None = None) -> None:
        """What the rulers say is firing. When their answer may not lift blocks (a ruler just restarted,
        one of several did not answer), the blocks it leaves out are kept while a ruler confirmed them
        within `hold` seconds: a restart or a flood lifts no block, and none outlives the hold."""
        now = time.monotonic() if now is None else now
        current = self.firing()
        confirmed = {key: now for key in firing}
        merged = dict(firing)
        if not may_lift:
            for key, entry in current.items():
                seen = self._confirmed.get(key, now)
                if key not in merged and now - seen < hold:
                    merged[key], confirmed[key] = entry, seen
        self.replace(merged)
        self._confirmed = confirmed

    def empty(self) -> bool:
        return not self._firing

    def _refresh(self, touched: set[tuple[str, str]]) -> None:
        changed = []
        for kind, principal in touched:
            section = vocabulary.BY_NAME[kind].section
            worst = None
            for entry in self._firing.get((kind, principal), {}).values():  # kinds x windows x severities
                if worst is None or _SEVERITY[entry["severity"]] > _SEVERITY[worst["severity"]]:
                    worst = entry
            view = self._view[section]
            if view.get(principal) != worst:
                if worst is None:
                    view.pop(principal, None)
                else:
                    view[principal] = worst
                changed.append((section, principal, worst))
        if changed:
            self.version += 1
            dropped = len(self._log) + len(changed) - LOG_SIZE
            if dropped > 0:  # the log forgets whole or partial versions: no changes-only answer below them
                self._complete_after = self.version if dropped > len(self._log) else self._log[dropped - 1][0]
            self._log.extend((self.version, section, principal, worst) for section, principal, worst in changed)

    @property
    def tag(self) -> str:
        return f"{self.epoch}-{self.version}"

    def snapshot(self, max_entries: int | None = None) -> dict[str, Any]:
        """{"users": {name: worst firing entry}, "departments": {...}}, at most `max_entries` each
        (critical first), with "truncated": how many were left out."""
        with self._lock:  # copied under the lock, cut outside it
            tag, views = self.tag, {section: list(view.items()) for section, view in self._view.items()}
        out: dict[str, Any] = {"version": tag}
        left_out = 0
        for section, items in views.items():
            if max_entries is not None and len(items) > max_entries:
                left_out += len(items) - max_entries
                items = heapq.nlargest(max_entries, items, key=lambda item: _SEVERITY[item[1]["severity"]])
            out[section] = dict(items)
        if left_out:
            out["truncated"] = left_out
        return out

    def since(self, tag: str) -> dict[str, Any] | None:
        """The changes after version `tag` ({section: {name: entry or None}}), or None when this state
        cannot say (another epoch, or older than the log): the poller needs the whole snapshot."""
        epoch, _, number = tag.partition("-")
        if epoch != self.epoch or not (number.isascii() and number.isdigit()):
            return None
        version = int(number)
        with self._lock:
            if version > self.version or version < self._complete_after:
                return None
            changes: dict[str, dict[str, Entry | None]] = {scope.section: {} for scope in vocabulary.SCOPES}
            for number_, section, principal, entry in reversed(self._log):  # newest first: cost ~ changes
                if number_ <= version:
                    break
                changes[section].setdefault(principal, entry)
            return {"version": self.tag, "since": tag, "changes": changes}
