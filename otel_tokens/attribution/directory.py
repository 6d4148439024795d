"""The directory: the operator's file mapping a user id to their department (and other attributes), for apps that
know who the user is (an authenticating proxy's header) but not where they belong (the company directory).

Operator data, as trusted as the app's own context: it completes a call's attribution, never overrides the app's
`usage_context`. Between the directory and what a request brought (trusted headers, trusted baggage), the
operator chooses (`directory_precedence`): `request` (default: the directory fills only what the request left
empty) or `directory` (its value replaces the request's). A lookup is one dict read (no I/O on the call path);
the file is re-read by a background thread once an edit has stood still for one check interval, and a malformed
edit keeps the last good directory (the warning names file, line and value).

Ids are matched exactly after the same normalization as every other source (`safe_value`: NFKC, invisible
characters removed, whitespace stripped): `Alice` and `alice` are two users, as they are in the metrics.
"""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from otel_tokens import names
from otel_tokens.config.errors import ConfigError
from otel_tokens.config.fields import DIRECTORY_PRECEDENCES
from otel_tokens.config.watched import SettleGate, file_stamp
from otel_tokens.logs import internal_error, logger
from otel_tokens.text import safe_value

PRECEDENCES = DIRECTORY_PRECEDENCES
KEY_COLUMNS = ("user_id", "user", names.USER_ID)  # the column holding the user id (CSV), first found
MAX_ID_LENGTH = 256  # as a trusted header's: a longer value is a mistake in the file


def _attribute(column: str, allowed: Iterable[str], where: str, source: str) -> str:
    """A column's attribute name: department, or another attribution dimension (user.id excluded)."""
    name = column.strip()
    if name in allowed and name != names.USER_ID:
        return name
    settable = ", ".join(sorted(set(allowed) - {names.USER_ID}))
    raise ConfigError(source, where, column, f"is not an attribute the directory can set ({settable})")


def _value(raw: Any, source: str, where: str) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise ConfigError(source, where, raw, "is not an id (text or a number)")
    text = str(raw).strip()
    if not text:
        return None
    if len(text) > MAX_ID_LENGTH or "," in text:
        raise ConfigError(source, where, raw, f"is not one id (longer than {MAX_ID_LENGTH} characters, or a list)")
    return safe_value(text)


def parse_csv(text: str, source: str, allowed: Iterable[str]) -> dict[str, dict[str, str]]:
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if not header:
        raise ConfigError(source, "line 1", "", "has no header row (user_id,department,...)")
    columns = [c.strip() for c in header]
    key = next((i for i, c in enumerate(columns) if c in KEY_COLUMNS), None)
    if key is None:
        raise ConfigError(source, "line 1", ",".join(header), f"has no user column ({', '.join(KEY_COLUMNS)})")
    attributes = {i: _attribute(c, allowed, f"line 1, column {i + 1}", source) for i, c in enumerate(columns)
                  if i != key}
    out: dict[str, dict[str, str]] = {}
    for number, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        where = f"line {number}"
        if len(row) != len(columns):
            raise ConfigError(source, where, ",".join(row), f"has {len(row)} cells, the header {len(columns)}")
        user = _value(row[key], source, where)
        if user is None:
            raise ConfigError(source, where, ",".join(row), "has no user id")
        if user in out:
            raise ConfigError(source, where, row[key], "is listed twice")
        values = {}
        for i, attribute in attributes.items():
            value = _value(row[i], source, f"{where}, column {columns[i]}")
            if value is not None:
                values[attribute] = value
        out[user] = values
    return out


def parse_yaml(data: Any, source: str, allowed: Iterable[str]) -> dict[str, dict[str, str]]:
    """`users: {alice: {department: support}, bob: research}` (a bare value is the department)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("users"), Mapping):
        raise ConfigError(source, "users", type(data).__name__, "is not a mapping of user id -> attributes")
    out: dict[str, dict[str, str]] = {}
    for raw_user, raw in data["users"].items():
        where = f"users.{raw_user}"
        user = _value(raw_user, source, where)
        if user is None:
            raise ConfigError(source, where, raw_user, "is not a user id")
        if user in out:
            raise ConfigError(source, where, raw_user, "is listed twice (after normalization)")
        if not isinstance(raw, Mapping):
            raw = {names.DEPARTMENT: raw}
        values = {}
        for column, cell in raw.items():
            attribute = _attribute(str(column), allowed, f"{where}.{column}", source)
            value = _value(cell, source, f"{where}.{column}")
            if value is not None:
                values[attribute] = value
        out[user] = values
    return out


def load_directory(path: Path, allowed: Iterable[str]) -> dict[str, dict[str, str]]:
    """user id -> attributes, from a CSV (by its suffix) or YAML file; ConfigError names file, line and value."""
    from otel_tokens.config.load import MAX_FILE_BYTES, read_yaml

    source = f"directory {path}"
    allowed = tuple(allowed)
    if path.suffix.lower() != ".csv":
        return parse_yaml(read_yaml(path, "directory"), source, allowed)
    import stat

    try:  # only a regular file, and no more than the limit: a device or a FIFO named by mistake must not hang
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(source, "(file)", str(path), "is not a regular file")
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(source, "(file)", str(path), f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(source, "(file)", str(path), f"is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, f"byte {exc.start}", str(path), "is not UTF-8 text") from None
    return parse_csv(text, source, allowed)


class Directory:
    """The directory in force, and the thread that re-reads it."""

    def __init__(self, path: Path, allowed: Iterable[str], precedence: str = "request",
                 interval: float = 1.0) -> None:
        self.path = path
        self.allowed = tuple(allowed)
        self.request_first = precedence != "directory"
        self.interval = max(0.05, interval)
        self.users: dict[str, dict[str, str]] = {}
        self._last: tuple[Any, Any, Mapping[str, str]] = (None, None, {})
        self._stamp: tuple[int, int, int] | None = None
        self._edit = SettleGate(self.interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reload(first=True)

    # --- on the call path: one dict read -------------------------------------------------------------
    def complete(self, values: Mapping[str, str]) -> Mapping[str, str]:
        """`values` with what the directory knows of its user added where a key is missing. The same context
        as the last call (contexts are never mutated) under the same directory gets the same answer back
        without a lookup; a new one costs one dict read and, when something is added, one dict."""
        last = self._last
        if last[0] is values and last[1] is self.users:
            return last[2]
        user = values.get(names.USER_ID)
        known = self.users.get(user) if user is not None else None
        completed = values
        if known:
            for key in known:
                if key in values:  # the request or the app said: only the rest is added
                    missing = {k: v for k, v in known.items() if k not in values}
                    completed = {**values, **missing} if missing else values
                    break
            else:
                completed = {**values, **known}
        self._last = (values, self.users, completed)
        return completed

    def for_request(self, values: dict[str, str]) -> dict[str, str]:
        """What a request's trusted headers said, with the directory applied as the operator chose."""
        known = self.users.get(values.get(names.USER_ID, ""))
        if not known:
            return values
        return {**values, **{k: v for k, v in known.items() if k not in values}} if self.request_first else {
            **values, **known}

    # --- off the call path ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="otel-tokens-directory", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reload()
            except Exception:
                internal_error("directory reload")

    def reload(self, first: bool = False) -> None:
        """Read the file once an edit has stood still for one interval (a file written in place may be read
        half-written and still parse); a bad file keeps the directory in force."""
        stamp = file_stamp(self.path)
        if stamp is not None and stamp == self._stamp:
            return
        if not first and stamp is not None and not self._edit.ready(stamp):
            return
        try:
            users = load_directory(self.path, self.allowed)
        except ConfigError as error:
            if file_stamp(self.path) != stamp:
                return  # written while read: read again at the next check
            self._stamp = stamp
            logger.warning("otel-tokens: %s; %s", error, "no user is completed from it until it is fixed" if first
                           else f"keeping the {len(self.users)} users read earlier")
            return
        if file_stamp(self.path) != stamp:
            return
        self._stamp = stamp
        self.users = users  # one reference swap: a call sees the old or the new directory, whole
        if not first:
            logger.info("otel-tokens: directory reloaded from %s (%d users)", self.path, len(users))


INSTALLED: list[Directory | None] = [None]  # the process's, set by the instrumentor


def installed() -> Directory | None:
    return INSTALLED[0]


def install(directory: Directory | None) -> None:
    old = INSTALLED[0]
    if old is not None and old is not directory:
        old.stop()
    INSTALLED[0] = directory
    if directory is not None:
        directory.start()


def install_directory(settings: Any) -> Directory | None:
    """The directory the settings name (or none), installed for this process; the attributes it may set are
    the department and the other attribution dimensions (`metric_dimensions`)."""
    if settings.directory is None:
        install(None)
        return None
    allowed = {names.DEPARTMENT, *settings.metric_dimensions} - {names.USER_ID, names.SESSION_ID}
    directory = Directory(settings.directory, sorted(allowed), settings.directory_precedence,
                          settings.price_reload_interval)
    install(directory)
    return directory
