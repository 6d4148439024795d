"""Writing the audit log: one hash-chained JSON line per event, appended by every process at once.

Each record carries the sha256 of the line before it (`prev`), so an edited, removed or inserted line breaks the
chain for `verify` to find. Writers in any process or thread serialize on an flock'd sidecar file
(`<path>.lock`, which survives rotation), read the last line and append in one `os.write` on an O_APPEND
descriptor opened by path under that lock: no process writes into a file another one rotated away, and a
pre-forking server's children share no lock state (flock belongs to the open file description, and each append
opens its own).

No fsync per append by default: the chain makes loss and tampering detectable, it does not make records durable.
Records lost to a power cut after the last anchor go unnoticed; a torn tail is noticed and acknowledged by the next
record (`"torn": <bytes>`). Pass `fsync=True` when every record must reach the disk (a few ms per append).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
MAX_TEXT = 1000
RESERVED = frozenset({"seq", "time", "event", "prev", "torn"})
_EVENT = re.compile(r"[a-z][a-z_.]{0,40}")
_MODE = 0o640
_CHUNK = 64 << 10
# json.dumps leaves these raw; str.splitlines() and older JavaScript JSON readers take them for line breaks.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})

Head = tuple[int, str]


class AuditError(Exception):
    """The audit log cannot be written or read: the message names the path and the OS error."""


def _fail(path: Path, doing: str, exc: OSError) -> AuditError:
    return AuditError(f"audit log {path}: cannot {doing}: {exc.strerror or exc}")


def line_hash(line: bytes) -> str:
    """The chain's hash of one line: sha256 of its bytes without the newline."""
    return hashlib.sha256(line).hexdigest()


def now_text() -> str:
    """UTC, millisecond precision, `Z`: sorts as text and reads the same in every time zone."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def backup_path(path: Path, number: int) -> Path:
    return path.with_name(f"{path.name}.{number}")


@contextmanager
def locked(path: Path, exclusive: bool) -> Iterator[None]:
    """Hold the log's sidecar lock. A reader whose lock file is missing (nothing ever wrote) goes on unlocked,
    so review with read-only access works; a writer creates it, and the log's directory, as needed."""
    lock = path.with_name(path.name + ".lock")
    flags = (os.O_RDWR | os.O_CREAT if exclusive else os.O_RDONLY) | os.O_CLOEXEC
    fd = -1
    try:
        try:
            fd = os.open(lock, flags, _MODE)
        except FileNotFoundError:
            if exclusive:
                lock.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock, flags, _MODE)
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        raise _fail(path, f"lock {lock}", exc) from exc
    try:
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lock


def _last_line(fd: int, size: int) -> tuple[bytes | None, int]:
    """The last newline-terminated line (without its newline), and the byte count of an unterminated tail after
    it. Reads backwards in chunks: the log may be megabytes, the lines are short."""
    buf, pos = b"", size
    while True:
        end = buf.rfind(b"\n")
        if end >= 0:
            start = buf.rfind(b"\n", 0, end) + 1
            if start > 0 or pos == 0:
                return buf[start:end], len(buf) - end - 1
        if pos == 0:
            return None, len(buf)
        step = min(_CHUNK, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf


def read_head(path: Path) -> tuple[Head | None, int]:
    """(seq, hash) of the last complete line of the file at `path` (None when it is missing or has none), and
    the byte count of a torn tail after it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, 0
    except OSError as exc:
        raise _fail(path, "read", exc) from exc
    try:
        line, torn = _last_line(fd, os.fstat(fd).st_size)
    except OSError as exc:
        raise _fail(path, "read", exc) from exc
    finally:
        os.close(fd)
    if line is None:
        return None, torn
    try:
        seq = json.loads(line)["seq"]
    except (ValueError, KeyError, TypeError):
        seq = None
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise AuditError(f"audit log {path}: its last line is not an audit record (run verify); not chaining onto it")
    return (seq, line_hash(line)), torn


def _text(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"  # 1000 characters in all


def _clean(value: Any) -> Any:
    """A JSON-safe copy of a field value: long text cut, anything that is not JSON data refused."""
    if isinstance(value, str):
        return _text(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"audit field value {value!r} is not valid JSON")
        return value
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise ValueError("audit field mappings must have string keys")
        return {_text(key): _clean(item) for key, item in value.items()}
    raise ValueError(f"audit field value of type {type(value).__name__} is not JSON data")


def _prepare(event: str, fields: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Validate before taking the lock, so a bad call never holds up the other writers."""
    if not isinstance(event, str) or not _EVENT.fullmatch(event):
        raise ValueError(f"audit event name {event!r} must match ^[a-z][a-z_.]{{0,40}}$")
    clash = RESERVED.intersection(fields)
    if clash:
        raise ValueError(f"audit fields may not set {', '.join(sorted(map(str, clash)))}")
    return event, _clean(fields)


def _dump(record: Mapping[str, Any]) -> bytes:
    """One line, whatever the text: json escapes newlines and control characters, we escape the other line
    breaks, and lone surrogates become \\uXXXX escapes instead of failing to encode."""
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=False, allow_nan=False)
    return text.translate(_LINE_BREAKS).encode("utf-8", "backslashreplace")


class AuditLog:
    """An append-only audit log at `path`, rotated at `max_bytes` into `path.1` .. `path.<backups>`."""

    def __init__(self, path: Path | str, max_bytes: int = 10 << 20, backups: int = 5, fsync: bool = False) -> None:
        if max_bytes <= 0 or backups < 0:
            raise ValueError("max_bytes must be positive and backups not negative")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record; returns the record as written."""
        return self._write([_prepare(event, fields)])[0]

    def append_many(self, records: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        """Append (event, fields) pairs under one lock in one write; returns how many."""
        return len(self._write([_prepare(event, fields) for event, fields in records]))

    def head(self) -> Head | None:
        """(seq, hash) of the last record, None for an empty log."""
        with locked(self.path, exclusive=False):
            return self._head()[0]

    def _head(self) -> tuple[Head | None, int]:
        head, torn = read_head(self.path)
        # A fresh file after a rotation (or a crash right after one) continues the rotated file's chain.
        return (head or read_head(backup_path(self.path, 1))[0]), torn

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _MODE)
        except OSError as exc:
            raise _fail(self.path, "open", exc) from exc

    def _rotate(self) -> None:
        try:
            if self.backups == 0:
                os.unlink(self.path)
                return
            for number in range(self.backups - 1, 0, -1):
                try:
                    os.replace(backup_path(self.path, number), backup_path(self.path, number + 1))
                except FileNotFoundError:
                    pass
            os.replace(self.path, backup_path(self.path, 1))
        except OSError as exc:
            raise _fail(self.path, "rotate", exc) from exc

    def _write(self, prepared: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        if not prepared:
            return []
        with locked(self.path, exclusive=True):
            fd = self._open()
            try:
                head, torn = self._head()
                rotate = os.fstat(fd).st_size >= self.max_bytes
                if rotate:  # a torn tail stays, unterminated, the rotated file's last line
                    os.close(fd)
                    fd = -1
                    self._rotate()
                    fd = self._open()
                seq, prev = head or (0, GENESIS)
                lines, records = [b"\n"] if torn and not rotate else [], []
                for event, fields in prepared:
                    seq += 1
                    record: dict[str, Any] = {"seq": seq, "time": now_text(), "event": event, **fields}
                    if torn:
                        record["torn"], torn = torn, 0
                    record["prev"] = prev
                    line = _dump(record)
                    prev = line_hash(line)
                    lines += [line, b"\n"]
                    records.append(record)
                data = memoryview(b"".join(lines))
                while data:
                    data = data[os.write(fd, data) :]
                if self.fsync:
                    os.fsync(fd)
            except OSError as exc:
                raise _fail(self.path, "append to", exc) from exc
            finally:
                if fd >= 0:
                    os.close(fd)
        return records
