"""The audit log on real files: the chain, what verify reports and where, anchors against a re-hashed chain,
rotation, torn writes, hostile text, and writers in several forked processes and threads at once."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from otel_tokens.audit import AuditError, AuditLog, anchor, default_anchor, verify

ZEROS = "0" * 64


def sha(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def lines_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def filled(path: Path, count: int, **kwargs: int | bool) -> AuditLog:
    log = AuditLog(path, **kwargs)
    for number in range(count):
        log.append("quota.grant", user=f"user{number}", tokens=1000 * number)
    return log


def rechain(lines: list[bytes], start: int) -> list[bytes]:
    """What an attacker who can write the file does: re-hash every line from `start` (0-based) on."""
    out = lines[:start]
    for line in lines[start:]:
        record = json.loads(line)
        record["prev"] = sha(out[-1]) if out else ZEROS
        out.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode())
    return out


def test_append_writes_chained_records_and_verifies_clean(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "dir" / "audit.jsonl"
    log = AuditLog(str(path))
    record = log.append("quota.grant", user="alice", tokens=5000, windows=["day"], extra={"by": "bob"})
    assert list(record) == ["seq", "time", "event", "user", "tokens", "windows", "extra", "prev"]
    assert record["seq"] == 1 and record["prev"] == ZEROS and record["event"] == "quota.grant"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    assert log.append_many([("quota.approve", {"user": "alice"}), ("guard.refusal", {"app": "kb"})]) == 2
    assert log.append_many([]) == 0

    lines = lines_of(path)
    assert json.loads(lines[0]) == record
    assert lines[0] == json.dumps(record, separators=(",", ":")).encode()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3]
    assert [json.loads(line)["prev"] for line in lines] == [ZEROS, sha(lines[0]), sha(lines[1])]
    assert log.head() == (3, sha(lines[2]))
    assert AuditLog(path).head() == (3, sha(lines[2]))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE((path.parent / "audit.jsonl.lock").stat().st_mode) == 0o640
    assert verify(path) == []
    assert AuditLog(tmp_path / "empty.jsonl").head() is None


@pytest.mark.parametrize("event", ["", "Quota", "1grant", "quota-grant", "quota.grant\n", "a" * 42, "grant2"])
def test_bad_event_names_are_refused(tmp_path: Path, event: str) -> None:
    with pytest.raises(ValueError, match="event name"):
        AuditLog(tmp_path / "audit.jsonl").append(event)


@pytest.mark.parametrize(
    "fields",
    [
        {"seq": 9},
        {"prev": ZEROS},
        {"time": "now"},
        {"event": "x"},
        {"torn": 3},
        {"v": object()},
        {"v": b"raw"},
        {"v": float("nan")},
        {"v": {1: "int key"}},
        {"v": {"a", "set"}},
    ],
)
def test_bad_fields_are_refused_and_nothing_is_written(tmp_path: Path, fields: dict[str, object]) -> None:
    path = tmp_path / "audit.jsonl"
    with pytest.raises(ValueError):
        AuditLog(path).append_many([("quota.grant", {"user": "ok"}), ("quota.grant", fields)])
    assert not path.exists()


def test_an_edited_line_is_reported_by_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    filled(path, 5)
    lines = lines_of(path)
    lines[2] = lines[2].replace(b'"tokens":2000', b'"tokens":2')
    write_lines(path, lines)
    problems = verify(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:4: prev is not the hash of {path}:3: that line was edited")


def test_a_deleted_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    filled(path, 5)
    lines = lines_of(path)
    write_lines(path, lines[:2] + lines[3:])
    problems = verify(path)
    assert f"{path}:3: seq 4 follows seq 2 ({path}:2), expected 3" in problems
    assert any(p.startswith(f"{path}:3: prev is not the hash of {path}:2") for p in problems)


def test_an_inserted_line_is_reported_even_when_it_chains_onto_the_one_before(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    filled(path, 4)
    lines = lines_of(path)
    forged = {"seq": 3, "time": "2024-01-01T00:00:00.000Z", "event": "quota.grant", "user": "mallory", "prev": ""}
    forged["prev"] = sha(lines[1])
    write_lines(path, [*lines[:2], json.dumps(forged, separators=(",", ":")).encode(), *lines[2:]])
    problems = verify(path)
    assert any(p.startswith(f"{path}:4: seq 3 follows seq 3") for p in problems)
    assert any(p.startswith(f"{path}:4: prev is not the hash of {path}:3") for p in problems)


def test_a_rehashed_chain_passes_the_chain_check_but_not_the_anchor(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = filled(path, 6)
    assert anchor(log) == log.head()
    anchor_file = default_anchor(path)
    assert anchor_file == tmp_path / "audit.jsonl.anchor"
    assert stat.S_IMODE(anchor_file.stat().st_mode) == 0o640
    assert list(json.loads(anchor_file.read_bytes())) == ["seq", "hash", "time"]
    filled(path, 2)  # records after the anchor are fine
    assert verify(path) == []

    lines = lines_of(path)
    lines[1] = lines[1].replace(b'"user":"user1"', b'"user":"mallory"')
    write_lines(path, rechain(lines, 1))
    assert verify(path, tmp_path / "no-anchor") == []
    assert verify(path) == [f"{anchor_file}:1: seq 6 does not match {path}:6: the log was rewritten after it"]


def test_truncation_after_an_anchor_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    elsewhere = tmp_path / "offsite" / "anchors"
    filled(path, 8, fsync=True)
    assert anchor(path, elsewhere)[0] == 8
    write_lines(path, lines_of(path)[:5])
    assert verify(path) == []  # the chain alone cannot tell a cut end
    assert verify(path, elsewhere) == [f"{elsewhere}:1: seq 8 was anchored but the log ends at seq 5: records removed"]
    filled(path, 3)  # writing on past the cut does not hide it
    assert verify(path, elsewhere) == [f"{elsewhere}:1: seq 8 does not match {path}:8: the log was rewritten after it"]


def test_anchors_of_an_empty_log_and_anchors_going_backwards(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    assert anchor(path) == (0, "")
    assert not default_anchor(path).exists()
    filled(path, 3)
    anchors = default_anchor(path)
    anchors.write_text(
        json.dumps({"seq": 3, "hash": sha(lines_of(path)[2])})
        + "\n"
        + json.dumps({"seq": 2, "hash": sha(lines_of(path)[1])})
        + "\nnot json\n"
    )
    assert verify(path) == [
        f"{anchors}:3: not an anchor record",
        f"{anchors}:2: anchored seq 2 is lower than an earlier anchor's 3",
    ]


def test_rotation_keeps_the_chain_and_the_seq_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=1500, backups=2)
    log.append("quota.grant", user="first")
    early = anchor(log)
    for number in range(40):
        AuditLog(path, max_bytes=1500, backups=2).append("quota.reload", n=number, pad="x" * 100)
    files = [path.with_name("audit.jsonl.2"), path.with_name("audit.jsonl.1"), path]
    assert all(file.exists() for file in files) and not path.with_name("audit.jsonl.3").exists()
    assert all(file.stat().st_size < 1500 + 200 for file in files)
    kept = [line for file in files for line in lines_of(file)]
    seqs = [json.loads(line)["seq"] for line in kept]
    assert seqs == list(range(seqs[0], 42)) and seqs[0] > 1  # the oldest were rotated away
    assert [json.loads(line)["prev"] for line in kept[1:]] == [sha(line) for line in kept[:-1]]
    assert early[0] == 1
    assert verify(path) == []  # an anchor older than the oldest kept line is fine
    path.with_name("audit.jsonl.1").unlink()
    assert any("expected" in problem for problem in verify(path))


def test_a_torn_last_line_is_acknowledged_by_the_next_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = filled(path, 3)
    lines = lines_of(path)
    tail = b'{"seq":4,"time":"2024-01-01T00:00'
    with path.open("ab") as file:
        file.write(tail)
    unacknowledged = f"{path}:4: not an audit record ({len(tail)} bytes; a torn write no record acknowledges yet)"
    assert verify(path) == [unacknowledged]
    assert log.head() == (3, sha(lines[2]))

    record = log.append("quota.reset", user="alice")
    assert (record["seq"], record["torn"], record["prev"]) == (4, len(tail), sha(lines[2]))
    assert lines_of(path)[3] == tail
    assert verify(path) == []
    assert log.append("quota.reset")["seq"] == 5
    assert verify(path) == []

    write_lines(path, [line for line in lines_of(path) if line != tail])
    assert verify(path) == [f"{path}:4: acknowledges a torn line of {len(tail)} bytes that is not there"]


def test_a_torn_line_at_a_rotation_is_acknowledged_in_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = filled(path, 3, max_bytes=100)  # one record a file
    with path.open("ab") as file:
        file.write(b'{"seq":')
    record = log.append("quota.revoke")
    assert record["torn"] == 7 and path.with_name("audit.jsonl.1").read_bytes().endswith(b'{"seq":')
    assert verify(path) == []


def test_a_last_line_that_is_not_a_record_stops_appending(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    filled(path, 2)
    with path.open("ab") as file:
        file.write(b"garbage\n")
    with pytest.raises(AuditError, match=re.escape(str(path))):
        AuditLog(path).append("quota.grant")


HOSTILE = [
    "line\nbreak",
    "cr\r\nlf",
    'quote " and \\ backslash',
    "nul\x00 bell\x07 esc\x1b[31m del\x7f",
    "ls\u2028ps\u2029nel\x85",
    "lone \ud800 surrogate",
    '"},"seq":1,"prev":"',
    "ü€😀",
    "x" * 5000,
]


def test_hostile_text_never_breaks_one_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append("guard.refusal", **{f"f{number}": text for number, text in enumerate(HOSTILE)})
    log.append_many([("guard.refusal", {text: [text, {text: text}]}) for text in HOSTILE])
    data = path.read_bytes()
    assert data.count(b"\n") == 1 + len(HOSTILE)
    assert len(data.decode("utf-8").splitlines()) == 1 + len(HOSTILE)  # also the Unicode line breaks

    def expected(text: str) -> str:
        return text if len(text) <= 1000 else text[:999] + "…"

    records = [json.loads(line) for line in lines_of(path)]
    assert [records[0][f"f{n}"] for n in range(len(HOSTILE))] == [expected(text) for text in HOSTILE]
    for record, text in zip(records[1:], HOSTILE, strict=True):
        assert record[expected(text)] == [expected(text), {expected(text): expected(text)}]
        assert record["seq"] > 1 and record["event"] == "guard.refusal"
    assert len(records[0]["f8"]) == 1000
    assert verify(path) == []


def _run_unprivileged(function: Callable[[str], str], argument: str) -> str:
    """function(argument), as nobody when we are root (root writes through any mode bits)."""
    if os.geteuid() != 0:
        return function(argument)
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()

    def child() -> None:
        try:
            os.setgid(65534)
            os.setuid(65534)
            results.put(function(argument))
        except BaseException as exc:
            results.put(f"child failed: {exc!r}")

    process = context.Process(target=child)
    process.start()
    process.join(20)
    return results.get()


def _append_error(path: str) -> str:
    try:
        AuditLog(path).append("quota.grant", user="alice")
    except AuditError as exc:
        return str(exc)
    return "no error"


def test_a_read_only_directory_gives_an_audit_error_naming_the_path(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="audit-ro-"))  # under /tmp: reachable by nobody, unlike tmp_path
    try:
        base.chmod(0o755)
        readonly = base / "ro"
        readonly.mkdir(mode=0o555)
        readonly.chmod(0o555)
        path = readonly / "audit.jsonl"
        message = _run_unprivileged(_append_error, str(path))
        assert str(path) in message and "Permission denied" in message, message
    finally:
        (base / "ro").chmod(0o755)
        shutil.rmtree(base)

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AuditError, match=re.escape(str(blocker / "audit.jsonl"))):
        AuditLog(blocker / "audit.jsonl").append("quota.grant")


def _writer(log: AuditLog, process: int) -> None:
    """One forked worker: two threads sharing the AuditLog object the parent made before forking."""

    def appends(thread: int) -> None:
        for number in range(200):
            log.append("quota.grant", process=process, thread=thread, n=number)

    threads = [threading.Thread(target=appends, args=(thread,)) for thread in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_processes_and_threads_appending_at_once_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=50_000, backups=20)
    assert log.head() is None  # used before the fork, as a pre-forking server's master might
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_writer, args=(log, number)) for number in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0

    backups = sorted(tmp_path.glob("audit.jsonl.[0-9]*"), key=lambda file: -int(file.suffix[1:]))
    assert backups  # it rotated while they wrote
    records = [json.loads(line) for file in [*backups, path] for line in lines_of(file)]
    assert [record["seq"] for record in records] == list(range(1, 1601))
    assert {(r["process"], r["thread"], r["n"]) for r in records} == {
        (p, t, n) for p in range(4) for t in range(2) for n in range(200)
    }
    assert verify(path) == []
