"""The grants file: the one place grants live, beside the quota file (a file the operator backs up with it, read
by every mode: budget mode reloads it, `otel-tokens rules` renders it, and it works without a budget store).

Written only through `GrantsFile.update()`: an exclusive lock on a sidecar file for the read-modify-write (two
grants at once both land), the new text written to a temporary file and renamed over the old one (a reader sees
the old file or the new, never half of one). Grants that ended, lapsed or were revoked more than `KEEP` ago are
dropped on write; the audit log keeps their history."""

from __future__ import annotations

import fcntl
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from otel_tokens.config.errors import ConfigError
from otel_tokens.config.load import read_yaml
from otel_tokens.quota.calendar import ALL_WINDOWS
from otel_tokens.quota.grants.model import GRANT, ID, RESET, STATUSES, Grant
from otel_tokens.quota.vocabulary import BY_NAME

KEEP = 30 * 86400  # seconds a finished grant stays in the file
MAX_TEXT = 200  # characters of a reason or a name
HEADER = ("# Written by `otel-tokens quota` (grant, approve, revoke, reset): change it through the CLI, which\n"
          "# locks it and writes the audit log. Times are UTC.\n")
TIMES = ("start", "until", "created", "approved_at", "pending_until", "revoked_at")


def clean_text(value: Any, what: str) -> str:
    """A reason or a name as it may be stored and shown: printable, one line, at most MAX_TEXT characters;
    ValueError naming `what` otherwise (refused, not rewritten: a name is evidence in the audit log)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} is empty")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{what} is longer than {MAX_TEXT} characters")
    if any(not ch.isprintable() for ch in value):
        raise ValueError(f"{what} {value!r} holds a control or invisible character")
    return value.strip()


def _time(value: Any) -> float:
    if isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or timezone.utc).timestamp()
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    raise ValueError


def utc_text(value: float) -> str:
    return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_grant(raw: Any, source: str, where: str) -> Grant:
    """One entry of the file, or ConfigError naming the file, the entry's field and its value."""
    if not isinstance(raw, Mapping):
        raise ConfigError(source, where, raw, "is not a mapping")
    values: dict[str, Any] = dict(raw)
    gid = values.get("id")
    if not isinstance(gid, str) or not ID.match(gid):
        raise ConfigError(source, f"{where}.id", gid, "is not a grant id (g- and hex digits)")
    where = f"{where} ({gid})"
    checks = (("scope", lambda v: v in BY_NAME), ("window", lambda v: v in ALL_WINDOWS),
              ("status", lambda v: v in STATUSES), ("kind", lambda v: v in (GRANT, RESET)))
    for key, ok in checks:
        if key in values and not ok(values[key]):
            raise ConfigError(source, f"{where}.{key}", values[key], "is not a known value")
    for key in TIMES:
        if values.get(key) is not None:
            try:
                values[key] = _time(values[key])
            except (ValueError, TypeError):
                raise ConfigError(source, f"{where}.{key}", values[key], "is not an ISO 8601 time") from None
    for key in ("tokens", "cost"):
        amount = values.setdefault(key, None)
        if amount is not None and (isinstance(amount, bool) or not isinstance(amount, (int, float))
                                   or not 0 < amount < 1e15 or not math.isfinite(amount)):
            raise ConfigError(source, f"{where}.{key}", amount, "is not a positive number")
    for key in ("principal", "reason", "requested_by", "approved_by", "revoked_by"):
        if values.get(key) is not None:
            try:
                clean_text(values[key], key)
            except ValueError as error:
                raise ConfigError(source, f"{where}.{key}", values[key], str(error)) from None
    try:
        grant = Grant(**values)
    except TypeError as error:
        raise ConfigError(source, where, sorted(values), f"has missing or unknown fields ({error})") from None
    if grant.tokens is None and grant.cost is None:
        raise ConfigError(source, where, gid, "grants neither tokens nor cost")
    return grant


def load_grants(path: Path) -> list[Grant]:
    """Every grant in the file ([] when there is none yet); ConfigError for a damaged file: refused as a whole,
    like the quota file, since a half-read file would drop limits silently."""
    if not path.exists():
        return []
    source = f"grants file {path}"
    data = read_yaml(path, "grants file")
    if data is None:
        return []
    entries = data.get("grants") if isinstance(data, Mapping) else None
    if not isinstance(entries, list):
        raise ConfigError(source, "grants", type(data).__name__, "is not a list of grants")
    grants = [parse_grant(entry, source, f"grants[{n}]") for n, entry in enumerate(entries)]
    ids = [g.id for g in grants]
    if len(set(ids)) != len(ids):
        raise ConfigError(source, "grants", sorted({i for i in ids if ids.count(i) > 1}), "holds an id twice")
    return grants


def grant_record(grant: Grant) -> dict[str, Any]:
    """The grant as the file, the audit log and the approval endpoint write it: its set fields, times as UTC ISO
    text."""
    entry = grant.as_dict()
    for key in TIMES:
        if key in entry:
            entry[key] = utc_text(entry[key])
    return entry


def dump_grants(grants: list[Grant]) -> str:
    entries = [grant_record(grant) for grant in grants]
    return HEADER + yaml.safe_dump({"grants": entries}, sort_keys=False, allow_unicode=True, width=120)


def finished_long_ago(grant: Grant, now: float) -> bool:
    ended = {"ended": grant.until, "lapsed": grant.pending_until, "revoked": grant.revoked_at,
             "rejected": grant.revoked_at}.get(grant.state(now))
    return ended is not None and now - ended > KEEP


class GrantsFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[Grant]:
        return load_grants(self.path)

    @contextmanager
    def update(self, now: float) -> Iterator[list[Grant]]:
        """The grants, locked against every other writer until the block ends; what the block leaves in the list
        is written (nothing when it raises). OSError names the path."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            grants = self.load()
            yield grants
            kept = [g for g in grants if not finished_long_ago(g, now)]
            self._write(dump_grants(kept))
        finally:
            os.close(lock)

    def _write(self, text: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)  # the apps read it; only the CLI's user writes it (the folder's permissions)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
