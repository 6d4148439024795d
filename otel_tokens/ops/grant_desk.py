"""Grant, approve, revoke and reset: each a locked change of the grants file (quota/grants/file.py) checked
against the quota file, written to the audit log, and (where the rules are ours to write) re-rendered into the
rule file with a reload, since a grant's start needs a render (its end does not: the series stops on its own).
The CLI and the guard server's approval endpoint both go through here."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from otel_tokens.quota.calendar import CONCURRENT, MINUTE, RATE_WINDOWS, ROLLING, window_end
from otel_tokens.quota.file import _PRINCIPAL, Quotas
from otel_tokens.quota.grants.file import GrantsFile, clean_text, grant_record, utc_text
from otel_tokens.quota.grants.model import ACTIVE, GRANT, PENDING, RESET, REVOKED, Grant
from otel_tokens.quota.vocabulary import APP, BY_NAME, KINDS
from otel_tokens.text import normalize_id

MAX_SPAN = 366 * 86400  # the longest grant, window end or not


class GrantError(ValueError):
    """A grant refused: the message says what and why (the CLI prints it, the endpoint answers it with `status`)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def principal_id(scope: str, principal: str) -> str:
    """The principal as calls are charged under it (the quota file's overrides are normalized the same way)."""
    name = clean_text(principal, "the principal")
    if not _PRINCIPAL.match(name):
        raise GrantError(f"principal {principal!r} holds a quote or a backslash")
    return name if scope == APP.name else normalize_id(name)


def longest_until(window: str, now: float, zone: str) -> float:
    """How far a grant may reach without --beyond-window: the calendar window's end; a day ahead for the sliding
    ones (24h, the minute, the calls in flight), whose usage leaves them as it ages."""
    if window in (ROLLING, *RATE_WINDOWS):
        return now + 86400
    return float(window_end(window, now, zone))


@dataclass
class GrantDesk:
    quotas: Quotas
    audit: Any = None  # otel_tokens.audit.AuditLog, or None: no audit log configured
    publish: Callable[[list[Grant]], None] | None = None  # re-render the rules and reload the ruler
    clock: Callable[[], float] = time.time

    @property
    def file(self) -> GrantsFile:
        path = self.quotas.grants.file
        assert path is not None, "load_quotas resolves the grants file"
        return GrantsFile(path)

    def windows_with(self, scope: str, principal: str, kinds: list[str]) -> list[str]:
        quota_scope = BY_NAME[scope]
        return [w for w in self.quotas.scope_windows(quota_scope, rates=True)
                if all(self.quotas.limits(quota_scope, w).of(principal).get(k) is not None for k in kinds)]

    def grant(self, scope: str, principal: str, amounts: Mapping[str, float], reason: str, by: str,
              window: str | None = None, until: float | None = None, beyond_window: bool = False,
              kind: str = GRANT) -> Grant:
        now = float(int(self.clock()))  # whole seconds: as the file and the rules write times
        if scope not in BY_NAME:
            raise GrantError(f"scope {scope!r} is not one of {', '.join(BY_NAME)}")
        principal = principal_id(scope, principal)
        kinds = [k for k in KINDS if amounts.get(k) is not None]
        if not kinds:
            raise GrantError("give --tokens N and/or --cost X")
        for k in kinds:
            value = amounts[k]
            if not 0 < value < 1e15:
                raise GrantError(f"--{k} {value:g} is not a positive number below 10^15")
        possible = self.windows_with(scope, principal, kinds)
        if window is None:
            if len(possible) != 1:
                raise GrantError(f"{scope} {principal!r} has a {' and '.join(kinds)} limit in "
                                 f"{', '.join(possible) or 'no window'}: name one with --window")
            window = possible[0]
        if window not in possible:
            raise GrantError(f"{scope} {principal!r} has no {' and '.join(kinds)} limit in the {window} window "
                             f"(it has one in: {', '.join(possible) or 'none'}): a grant raises a limit that exists")
        if window == CONCURRENT or (window == MINUTE and "cost" in kinds):
            raise GrantError(f"the {window} window takes no grant of {' and '.join(kinds)}")
        end = longest_until(window, now, self.quotas.timezone)
        until = float(int(end if until is None else until))
        if until <= now:
            raise GrantError("--until is in the past")
        if until > (now + MAX_SPAN if beyond_window else end + 1e-6):
            raise GrantError(f"--until reaches past the {window} window's end ({utc_text(end)}); say --beyond-window "
                             "to raise every window until then")
        required = self.quotas.grants.required
        grant = Grant(f"g-{secrets.token_hex(6)}", scope, principal, window, amounts.get("tokens"),
                      amounts.get("cost"), now, until, clean_text(reason, "--reason"), clean_text(by, "--by"), now,
                      PENDING if required else ACTIVE, kind,
                      pending_until=now + self.quotas.grants.pending_expiry if required else None)
        with self._change(now) as grants:
            grants.append(grant)
            current = list(grants)
            self._record("grant.requested" if required else f"{kind}.created", grant)
        if not required:
            self._publish(current)
        return grant

    def approve(self, gid: str, approver: str) -> Grant:
        now = float(int(self.clock()))
        with self._change(now) as grants:
            index, grant = _find(grants, gid)
            state = grant.state(now)
            if state != PENDING:
                raise GrantError(f"grant {gid} is {state}, not pending approval", 409)
            if _same(approver, grant.requested_by):
                raise GrantError(f"{approver!r} requested grant {gid}: someone else must approve it", 403)
            if grant.until <= now:
                raise GrantError(f"grant {gid} would have ended at {utc_text(grant.until)}", 409)
            grant = replace(grant, status=ACTIVE, approved_by=approver, approved_at=now, start=max(grant.start, now))
            grants[index] = grant
            current = list(grants)
            self._record("grant.approved", grant)
        self._publish(current)
        return grant

    def revoke(self, gid: str, by: str, status: str = REVOKED) -> Grant:
        now = float(int(self.clock()))
        by = clean_text(by, "--by")
        with self._change(now) as grants:
            index, grant = _find(grants, gid)
            if grant.status not in (ACTIVE, PENDING) or grant.state(now) in ("ended", "lapsed"):
                raise GrantError(f"grant {gid} is {grant.state(now)}: nothing to revoke", 409)
            grant = grants[index] = replace(grant, status=status, revoked_by=by, revoked_at=now)
            current = list(grants)
            self._record(f"grant.{status}", grant)
        self._publish(current)
        return grant

    def reset(self, scope: str, principal: str, used: Mapping[str, Mapping[str, float]], reason: str,
              by: str) -> list[Grant]:
        """A grant of each window's usage (`used`: window -> kind -> amount) until the window ends: the principal
        starts over without any usage being deleted."""
        made = []
        for window, amounts in used.items():
            positive = {k: v for k, v in amounts.items() if v > 0}
            if positive:
                made.append(self.grant(scope, principal, positive, reason, by, window, kind=RESET))
        return made

    @contextmanager
    def _change(self, now: float) -> Iterator[list[Grant]]:
        """The locked grants file; the audit record is written inside, before the file: a change the audit log
        cannot hold is not made (AuditError), and one whose file write then fails is recorded as aborted."""
        self._recorded: tuple[str, Grant] | None = None
        try:
            with self.file.update(now) as grants:
                yield grants
        except OSError:
            if self._recorded is not None and self.audit is not None:
                self.audit.append("grant.aborted", event=self._recorded[0], id=self._recorded[1].id)
            raise

    def _record(self, event: str, grant: Grant) -> None:
        if self.audit is not None:
            self.audit.append(event, **grant_record(grant))
            self._recorded = (event, grant)

    def _publish(self, grants: list[Grant]) -> None:
        if self.publish is not None:
            self.publish(grants)


def _find(grants: list[Grant], gid: str) -> tuple[int, Grant]:
    for index, grant in enumerate(grants):
        if grant.id == gid:
            return index, grant
    raise GrantError(f"no grant {gid!r} in the grants file", 404)


def _same(a: str, b: str) -> bool:
    return normalize_id(a).strip().casefold() == normalize_id(b).strip().casefold()
