"""The limits budget mode enforces: the quota file with the grants in force folded in (quota/grants). Both files
are re-read off the call path when their stamp changes and has stood still (config/watched.py); the grants in force
are re-folded when one starts or ends, so an expiring grant stops counting at its time (within the worker's tick),
whether or not any file changed. A bad file keeps what was read before, with a warning."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from otel_tokens.config.errors import ConfigError
from otel_tokens.config.watched import SettleGate, Stamp, file_stamp
from otel_tokens.logs import logger
from otel_tokens.quota.file import Quotas, load_quotas, suspicious_changes
from otel_tokens.quota.grants.file import load_grants
from otel_tokens.quota.grants.model import Grant, apply

Listener = Callable[[str, dict], None]  # (audit event, fields)


class LimitsSource:
    def __init__(self, path: Path, settle: float, on_event: Listener | None = None,
                 without: str = "lets calls through") -> None:
        self.path, self.without = path, without  # what budget mode does while it has no quotas
        self.base: Quotas | None = None  # the quota file as read
        self.quotas: Quotas | None = None  # with the grants in force
        self.grants: list[Grant] = []
        self._stamp: Stamp | None = None
        self._grants_stamp: Stamp | None = None
        self._edit, self._grants_edit = SettleGate(settle), SettleGate(settle)
        self._change = float("inf")  # when a grant next starts or ends
        self.on_event = on_event

    def refresh(self, now: float | None = None) -> bool:
        """Re-read what changed and re-fold the grants where due; True when the limits in force are new."""
        now = time.time() if now is None else now
        changed = self._read_quotas()
        changed = self._read_grants() or changed
        if changed or now >= self._change:
            if self.base is None:
                return False
            self.quotas, self._change = apply(self.base, self.grants, now)
            return True
        return False

    def due(self, now: float) -> bool:
        """A grant starts or ends by `now`: cheap, for the worker's every tick."""
        return now >= self._change

    def _read_quotas(self) -> bool:
        path = self.path
        stamp = file_stamp(path)
        if stamp is not None and stamp == self._stamp:
            return False
        if self.base is not None and stamp is not None and not self._edit.ready(stamp):
            return False  # an edit: read once it stands still
        try:
            quotas = load_quotas(path, budget=True)
        except ConfigError as error:
            if file_stamp(path) != stamp:
                return False  # written while read: the next check reads it again
            self._stamp = stamp
            if self.base is None:
                logger.warning("otel-tokens: %s; budget mode has no quotas and %s until the file is valid", error,
                               self.without)
            else:
                logger.warning("otel-tokens: %s; keeping the quotas read earlier from %s", error, path)
            return False
        if file_stamp(path) != stamp:
            return False  # written while read
        self._stamp = stamp
        if self.base is not None:
            logger.info("otel-tokens: quotas reloaded from %s", path)
            changes = suspicious_changes(self.base, quotas)
            if changes:
                logger.warning("otel-tokens: quota file %s: %s; intended?", path, "; ".join(changes[:20]) +
                               (f" and {len(changes) - 20} more" if len(changes) > 20 else ""))
            self._emit("quota.reloaded", {"file": str(path), "changes": limit_changes(self.base, quotas)[:200]})
        self.base = quotas
        return True

    def _read_grants(self) -> bool:
        if self.base is None or self.base.grants.file is None:
            return False
        path = self.base.grants.file
        stamp = file_stamp(path)
        if stamp == self._grants_stamp:
            return False
        if stamp is not None and self._grants_stamp is not None and not self._grants_edit.ready(stamp):
            return False
        try:
            grants = load_grants(path)
        except ConfigError as error:
            self._grants_stamp = stamp
            logger.warning("otel-tokens: %s; keeping the grants read earlier", error)
            return False
        if file_stamp(path) != stamp:
            return False
        self._grants_stamp = stamp
        self.grants = grants
        return True

    def _emit(self, event: str, fields: dict) -> None:
        if self.on_event is not None:
            self.on_event(event, fields)


def limit_changes(old: Quotas, new: Quotas) -> list[str]:
    """Every limit the reload changed, as `section window principal kind: old -> new` ('default' for the default)."""
    from otel_tokens.quota.vocabulary import BUDGET_KINDS, SCOPES

    out = []
    for scope in SCOPES:
        for window in sorted({*old.windows.get(scope.section, {}), *new.windows.get(scope.section, {})}):
            before, after = old.limits(scope, window), new.limits(scope, window)
            pairs = [("default", before.default, after.default)] + [
                (name, before.overrides.get(name), after.overrides.get(name))
                for name in sorted({*before.overrides, *after.overrides})]
            for who, was, now in pairs:
                for kind in BUDGET_KINDS:
                    a = was.get(kind) if was is not None else None
                    b = now.get(kind) if now is not None else None
                    if a != b:
                        out.append(f"{scope.section} {window} {who} {kind}: "
                                   f"{'none' if a is None else f'{a:g}'} -> {'none' if b is None else f'{b:g}'}")
    return out
