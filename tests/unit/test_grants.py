"""Grants without a store: what the desk accepts and refuses, the grants file under concurrent writers and readers,
what a damaged file says, and how grants fold into the limits in force."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
import yaml

from otel_tokens.config.errors import ConfigError
from otel_tokens.ops.grant_desk import GrantDesk, GrantError
from otel_tokens.quota.file import load_quotas
from otel_tokens.quota.grants.file import load_grants
from otel_tokens.quota.grants.model import Grant, apply
from otel_tokens.quota.vocabulary import USER

QUOTAS = {"timezone": "Asia/Shanghai",
          "users": {"default": {"24h": {"tokens": 1000}, "month": {"cost": 5}}},
          "departments": {"default": {"month": {"tokens": 100000}}}}


@pytest.fixture
def desk(tmp_path):
    path = tmp_path / "quotas.yml"
    path.write_text(yaml.safe_dump(QUOTAS))
    return GrantDesk(load_quotas(path, budget=True))


def test_a_grant_needs_a_limit_to_raise_and_ends_by_the_windows_end_unless_told(desk):
    with pytest.raises(GrantError, match=r"has no tokens limit in the month window \(it has one in: 24h"):
        desk.grant("user", "alice", {"tokens": 10}, "r", "ops", "month")
    with pytest.raises(GrantError, match="has a tokens and cost limit in no window: name one with --window"):
        desk.grant("user", "alice", {"tokens": 10, "cost": 1}, "r", "ops")
    made = desk.grant("user", "alice", {"cost": 2.5}, "r", "ops")  # the one window with a cost limit
    assert (made.window, made.cost, made.tokens) == ("month", 2.5, None)
    end = made.until  # the month's end in Asia/Shanghai: local midnight
    assert time.strftime("%H:%M", time.gmtime(end)) == "16:00"
    with pytest.raises(GrantError, match="reaches past the month window's end"):
        desk.grant("user", "alice", {"cost": 1}, "r", "ops", "month", end + 3600)
    assert desk.grant("user", "alice", {"cost": 1}, "r", "ops", "month", end + 3600, beyond_window=True)
    with pytest.raises(GrantError, match="in the past"):
        desk.grant("user", "alice", {"tokens": 1}, "r", "ops", "24h", time.time() - 1)
    with pytest.raises(GrantError, match="positive"):
        desk.grant("user", "alice", {"tokens": -5}, "r", "ops", "24h")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("reason", "ok\ngrants: []", "control or invisible"),  # a line of YAML smuggled into the file
    ("reason", "x" * 201, "longer than 200"),
    ("by", "ops\u202e", "control or invisible"),  # right-to-left override: a name that reads as another
    ("by", "  ", "empty"),
    ("principal", 'al"ice', "quote or a backslash"),  # ends up in PromQL label values
    ("principal", "al\\ice", "quote or a backslash"),
])
def test_hostile_text_is_refused_with_what_was_wrong(desk, field, value, message):
    args = {"reason": "r", "by": "ops", "principal": "alice"} | {field: value}
    with pytest.raises((GrantError, ValueError), match=message):
        desk.grant("user", args["principal"], {"tokens": 5}, args["reason"], args["by"], "24h")
    assert not desk.file.path.exists() or load_grants(desk.file.path) == []


def test_text_that_is_only_unusual_round_trips_exactly(desk):
    reason = "季度报告 #1: {{ $labels }} `rm -rf` 'quoted' & <b>"
    made = desk.grant("user", "ａｌｉｃｅ", {"tokens": 5}, reason, "王芳", "24h")
    assert made.principal == "alice"  # charged as calls are: NFKC
    (back,) = load_grants(desk.file.path)
    assert back == made


def _grant_many(path: str, n: int) -> None:
    desk = GrantDesk(load_quotas(__import__("pathlib").Path(path), budget=True))
    for i in range(n):
        desk.grant("user", f"user-{i}", {"tokens": 1}, "load", "ops", "24h")


def test_concurrent_writers_lose_nothing_and_readers_never_see_half_a_file(desk, tmp_path):
    stop, seen, errors = threading.Event(), [], []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(len(load_grants(desk.file.path)))
            except ConfigError as error:
                errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_grant_many, args=(str(tmp_path / "quotas.yml"), 15)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    stop.set()
    reader.join()
    grants = load_grants(desk.file.path)
    assert len(grants) == 60 and len({g.id for g in grants}) == 60
    assert not errors and seen == sorted(seen)


def test_a_damaged_grants_file_names_the_entry_and_field(desk):
    desk.grant("user", "alice", {"tokens": 5}, "r", "ops", "24h")
    text = desk.file.path.read_text().replace("tokens: 5", "tokens: lots")
    desk.file.path.write_text(text)
    with pytest.raises(ConfigError, match=r"grants file .*: grants\[0\] \(g-[0-9a-f]+\)\.tokens: 'lots' is not a "
                                          "positive number"):
        load_grants(desk.file.path)


def test_pending_requests_lapse_and_only_someone_else_approves(tmp_path):
    path = tmp_path / "quotas.yml"
    path.write_text(yaml.safe_dump(QUOTAS | {"grants": {"approval": "required", "approvers": "a.yml",
                                                        "pending_hours": 1}}))
    clock = [1_800_000_000.0]
    desk = GrantDesk(load_quotas(path, budget=True), clock=lambda: clock[0])
    made = desk.grant("user", "alice", {"tokens": 5}, "r", "li.ming", "24h")
    assert made.state(clock[0]) == "pending"
    with pytest.raises(GrantError, match="someone else") as caught:
        desk.approve(made.id, "LI.MING")  # the same name, spelled otherwise
    assert caught.value.status == 403
    clock[0] += 3601
    with pytest.raises(GrantError, match="is lapsed, not pending") as caught:
        desk.approve(made.id, "wang.fang")
    assert caught.value.status == 409


def test_grants_fold_into_the_limits_in_force_and_say_when_that_changes(desk):
    now = 1_800_000_000.0
    grants = [Grant("g-00000001", "user", "alice", "24h", 300, None, now - 10, now + 60, "r", "o", now),
              Grant("g-00000002", "user", "alice", "24h", 200, None, now - 10, now + 30, "r", "o", now),
              Grant("g-00000003", "user", "alice", "24h", 999, None, now + 20, now + 90, "r", "o", now),
              Grant("g-00000004", "user", "bob", "24h", 999, None, now - 90, now - 1, "r", "o", now),
              Grant("g-00000005", "user", "carl", "24h", 999, None, now - 9, now + 9, "r", "o", now, "revoked")]
    limits, change = apply(desk.quotas, grants, now)
    assert limits.limits(USER).of("alice").tokens == 1500
    assert limits.limits(USER).of("bob").tokens == limits.limits(USER).of("carl").tokens == 1000
    assert limits.limits(USER, "month").of("alice").cost == 5  # other windows untouched
    assert change == now + 20  # the next grant starts
    assert apply(desk.quotas, grants, now + 25)[0].limits(USER).of("alice").tokens == 1000 + 300 + 200 + 999
    limits, change = apply(desk.quotas, grants, now + 35)
    assert (limits.limits(USER).of("alice").tokens, change) == (1000 + 300 + 999, now + 60)


def test_a_change_the_audit_log_cannot_hold_is_not_made(desk, tmp_path):
    from otel_tokens.audit import AuditError, AuditLog

    (tmp_path / "not-a-folder").write_text("")
    desk.audit = AuditLog(tmp_path / "not-a-folder" / "audit.jsonl")
    with pytest.raises(AuditError, match="not-a-folder"):
        desk.grant("user", "alice", {"tokens": 5}, "r", "ops", "24h")
    assert load_grants(desk.file.path) == []
    desk.audit = AuditLog(tmp_path / "audit.jsonl")
    made = desk.grant("user", "alice", {"tokens": 5}, "r", "ops", "24h")
    assert [g.id for g in load_grants(desk.file.path)] == [made.id]


def test_the_rules_render_only_what_the_file_still_limits(desk):
    from otel_tokens.ops.rules import render_text

    now = time.time()
    both = Grant("g-00000007", "user", "alice", "month", 10, 2.0, now, now + 60, "r", "o", now)  # no month tokens
    text = render_text(desk.quotas, grants=[both], now=now)
    assert "llm_quota:user_cost:month_grant" in text and "llm_quota:user_tokens:month_grant" not in text
    gone = Grant("g-00000008", "user", "alice", "week", 10, None, now, now + 60, "r", "o", now)  # no week limit
    assert "grant" not in render_text(desk.quotas, grants=[gone], now=now).replace("limit_granted", "")
