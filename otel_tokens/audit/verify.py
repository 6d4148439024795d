"""Checking the audit log, and anchoring its head so that a rewritten chain is caught too.

The chain alone catches an edited, removed or inserted line, but not someone who edits a line and recomputes
every hash after it. An anchor records (seq, hash) of the head at a moment; kept where the log's writers cannot
write (another host, write-once storage, a signed ticket), it pins everything up to that record. An anchor
file left beside the log only helps against someone who does not think of rewriting it too.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any

from otel_tokens.audit.log import GENESIS, AuditError, AuditLog, line_hash, locked, now_text

_HEX64 = re.compile(r"[0-9a-f]{64}")


def default_anchor(path: Path | str) -> Path:
    """Where anchors go unless told: beside the log, `<path>.anchor`."""
    path = Path(path)
    return path.with_name(path.name + ".anchor")


def anchor(log: AuditLog | Path | str, anchor_path: Path | str | None = None) -> tuple[int, str]:
    """Append the log's head as one JSON line to the anchor file; returns it, (0, "") for an empty log.

    Anchors are serialized on the anchor file's own lock and read the head under it, so their seqs never go
    backwards; the log itself is only read (under its shared lock), so review needs no write access to it."""
    log = log if isinstance(log, AuditLog) else AuditLog(log)
    target = Path(anchor_path) if anchor_path is not None else default_anchor(log.path)
    if log.head() is None:
        return 0, ""
    fd = -1
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        fcntl.flock(fd, fcntl.LOCK_EX)
        head = log.head()
        if head is None:  # the log went away in between
            return 0, ""
        line = json.dumps({"seq": head[0], "hash": head[1], "time": now_text()}, separators=(",", ":")) + "\n"
        os.write(fd, line.encode())
        os.fsync(fd)  # rare and worth keeping: an anchor is the evidence
        return head
    except OSError as exc:
        raise AuditError(f"audit anchor {target}: cannot write: {exc.strerror or exc}") from exc
    finally:
        if fd >= 0:
            os.close(fd)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AuditError(f"audit log {path}: cannot read: {exc.strerror or exc}") from exc


def _lines(data: bytes) -> list[bytes]:
    """A file's lines without newlines; an unterminated last piece (a torn write) is a line of its own."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def _log_files(path: Path) -> list[Path]:
    """The backups oldest first (`path.N`, highest N), then the current file."""
    pattern = re.compile(re.escape(path.name) + r"\.([0-9]+)")
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        names = []
    except OSError as exc:
        raise AuditError(f"audit log {path}: cannot list its directory: {exc.strerror or exc}") from exc
    numbered = sorted((int(match[1]), name) for name in names if (match := pattern.fullmatch(name)))
    files = [path.parent / name for _, name in reversed(numbered)]
    return files + [path] if path.exists() else files


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    seq, torn = record.get("seq"), record.get("torn", 0)
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(torn, int) or isinstance(torn, bool):
        return None
    if not all(isinstance(record.get(key), str) for key in ("time", "event", "prev")):
        return None
    return record


def _anchors(path: Path, problems: list[str]) -> list[tuple[str, int, str]]:
    """(where, seq, hash) of each anchor; a line that is not one is a problem."""
    if not path.exists():
        return []
    anchors = []
    for number, line in enumerate(_lines(_read(path)), 1):
        try:
            item = json.loads(line)
            seq, digest = item["seq"], item["hash"]
        except (ValueError, KeyError, TypeError):
            seq = digest = None
        if isinstance(seq, int) and not isinstance(seq, bool) and isinstance(digest, str) and _HEX64.fullmatch(digest):
            anchors.append((f"{path}:{number}", seq, digest))
        else:
            problems.append(f"{path}:{number}: not an anchor record")
    return anchors


def verify(path: Path | str, anchor_path: Path | str | None = None) -> list[str]:
    """Problems found in the log at `path` (all its kept files) and against its anchors; empty when intact.

    Each problem names the file and line. The oldest kept line is trusted as the chain's start (older ones were
    rotated away) unless it claims to be seq 1 with a prev other than zeros."""
    path = Path(path)
    problems: list[str] = []
    # Anchors first: any anchor read now names a head that existed before the log is read below.
    anchors = _anchors(Path(anchor_path) if anchor_path is not None else default_anchor(path), problems)
    with locked(path, exclusive=False):  # no rotation or half-written line while reading
        files = [(file, _read(file)) for file in _log_files(path)]
    if not files:
        problems.append(f"{path}: no audit log there")

    wanted = {seq for _, seq, _ in anchors}
    found: dict[int, tuple[str, str]] = {}  # anchored seq -> (hash, where)
    first: int | None = None
    last: tuple[int, str, str] | None = None  # seq, hash, where
    junk: tuple[str, int] | None = None  # a line that is not a record, until a record acknowledges it as torn
    for file, data in files:
        for number, line in enumerate(_lines(data), 1):
            where = f"{file}:{number}"
            record = _record(line)
            if record is None:
                if junk:
                    problems.append(f"{junk[0]}: not an audit record")
                junk = (where, len(line))
                continue
            torn = record.get("torn", 0)
            if junk and torn != junk[1]:
                problems.append(f"{junk[0]}: not an audit record")
            elif torn and not junk:
                problems.append(f"{where}: acknowledges a torn line of {torn} bytes that is not there")
            junk = None
            seq, digest = record["seq"], line_hash(line)
            if last is None:
                if seq < 1 or (seq == 1 and record["prev"] != GENESIS):
                    problems.append(f"{where}: seq {seq} with prev {record['prev'][:16]}… is not a valid start")
            else:
                if seq != last[0] + 1:
                    problems.append(f"{where}: seq {seq} follows seq {last[0]} ({last[2]}), expected {last[0] + 1}")
                if record["prev"] != last[1]:
                    problems.append(
                        f"{where}: prev is not the hash of {last[2]}: that line was edited, "
                        "or lines were removed or inserted between them"
                    )
            first = seq if first is None else first
            last = (seq, digest, where)
            if seq in wanted:
                found[seq] = (digest, where)
    if junk:
        problems.append(f"{junk[0]}: not an audit record ({junk[1]} bytes; a torn write no record acknowledges yet)")

    end, highest = last[0] if last else 0, 0
    for where, seq, digest in anchors:
        if seq < highest:
            problems.append(f"{where}: anchored seq {seq} is lower than an earlier anchor's {highest}")
        highest = max(highest, seq)
        if seq in found:
            if found[seq][0] != digest:
                problems.append(f"{where}: seq {seq} does not match {found[seq][1]}: the log was rewritten after it")
        elif seq > end:
            problems.append(f"{where}: seq {seq} was anchored but the log ends at seq {end}: records removed")
        elif first is not None and seq >= first:
            problems.append(f"{where}: anchored seq {seq} is missing from the log")
    return problems
