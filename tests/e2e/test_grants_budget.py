"""Grants in budget mode, through the real CLI against a real redis-server and an app under budget mode: a user at
100 % is refused; a grant lets the next call through; at its end the user is refused again with nothing re-read
by hand; a reset holds until the window's end; with approval required nothing changes until an approver (not
the requester) approves; the audit log holds every step and `quota audit --verify` finds an edited line."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest
import yaml

from otel_tokens import QuotaExceededError, quota_status
from otel_tokens.ops.cli import main
from tests.support.budget import budget_app


def refused(app, user: str, tries: int = 100) -> int:
    """Calls served before the first refusal."""
    for served in range(tries):
        try:
            app.ask(user)
        except QuotaExceededError:
            return served
    raise AssertionError(f"{user} was never refused")


def wait_until_served(app, user: str, timeout: float = 5.0) -> None:
    """Budget mode re-reads the grants file off the call path (its reload interval, then a settle time)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            app.ask(user)
            return
        except QuotaExceededError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["quota", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def setup(tmp_path, redis_url):
    quota_file = tmp_path / "quotas.yml"
    data = {"users": {"default": {"24h": {"tokens": 400}, "day": {"tokens": 100000}}},
            "grants": {"audit_log": "audit.jsonl"}}
    quota_file.write_text(yaml.safe_dump(data))
    common = ["--quota-file", str(quota_file), "--store", redis_url]
    return quota_file, common, data


def test_a_grant_lets_the_refused_user_through_until_it_ends_then_refuses_again(setup, redis_url, capsys):
    quota_file, common, _ = setup
    for app in budget_app(quota_file, redis_url):
        refused(app, "alice")
        with pytest.raises(QuotaExceededError):
            app.ask("alice")
        code, out, err = cli(capsys, "grant", *common, "--user", "alice", "--tokens", "500", "--window", "24h",
                             "--until", "+1h", "--reason", "quarterly report", "--by", "ops.li")
        assert code == 0, err
        gid = out.split()[0]
        assert out.startswith(f"{gid} active: grant of 500 tokens to user 'alice' in the 24h window")
        wait_until_served(app, "alice")
        refused(app, "alice")
        tokens, _, _ = app.held("alice")
        assert 900 - 116 < tokens <= 900  # refused again only where the worst case (116) no longer fits 400 + 500
        code, out, _ = cli(capsys, "show", *common, "--user", "alice")
        assert f"24h   tokens limit 400 + 500 granted, used {tokens}, remaining {900 - tokens}" in out
        status = {(w.scope, w.window, w.kind): w for w in quota_status(user_id="alice").windows}
        assert (status["user", "24h", "tokens"].limit, status["user", "24h", "tokens"].used) == (900, tokens)
        # a second grant ending in 2 s: through, then refused again at its end with no one touching anything
        until = datetime.fromtimestamp(time.time() + 2, timezone.utc).isoformat()
        code, out, err = cli(capsys, "grant", *common, "--user", "alice", "--tokens", "2000", "--window", "24h",
                             "--until", until, "--reason", "demo", "--by", "ops.li")
        assert code == 0, err
        wait_until_served(app, "alice")
        time.sleep(max(0.0, datetime.fromisoformat(until).timestamp() - time.time()) + 0.3)
        with pytest.raises(QuotaExceededError) as caught:
            app.ask("alice")
        assert caught.value.limit == "900"  # the file's 400 and the grant still in force
        code, out, _ = cli(capsys, "revoke", *common, gid, "--by", "ops.li")
        assert code == 0 and "revoked" in out
        time.sleep(0.5)
        with pytest.raises(QuotaExceededError) as caught:
            app.ask("alice")
        assert caught.value.limit == "400"
    lines = [json.loads(line) for line in (quota_file.parent / "audit.jsonl").read_text().splitlines()]
    assert [line["event"] for line in lines if line["event"].startswith("grant")] == [
        "grant.created", "grant.created", "grant.revoked"]
    first = next(line for line in lines if line["event"] == "grant.created")
    assert (first["principal"], first["tokens"], first["window"], first["requested_by"], first["reason"]) == (
        "alice", 500, "24h", "ops.li", "quarterly report")
    refusals = [line for line in lines if line["event"] == "guard.refused"]
    assert refusals and refusals[0]["principal"] == "alice" and refusals[0]["limit"] == "400"
    assert "hi" not in json.dumps(refusals)  # the prompt never reaches the audit log


def test_a_reset_grants_the_usage_back_until_the_window_ends(setup, redis_url, capsys):
    quota_file, common, _ = setup
    for app in budget_app(quota_file, redis_url):
        refused(app, "bob")
        tokens, _, _ = app.held("bob")
        code, out, err = cli(capsys, "reset", *common, "--user", "bob", "--window", "24h", "--reason", "runaway "
                             "script fixed", "--by", "ops.li")
        assert code == 0, err
        assert f"reset of {tokens} tokens to user 'bob' in the 24h window" in out
        wait_until_served(app, "bob")
        refused(app, "bob")
        assert 2 * tokens - 116 < app.held("bob")[0] <= tokens + 400  # the whole 400 again
        code, out, _ = cli(capsys, "list", *common, "--user", "bob")
        assert "reset" in out and "active" in out


def test_with_approval_required_a_grant_waits_for_another_persons_token(setup, redis_url, capsys, monkeypatch):
    quota_file, common, data = setup
    data["grants"] |= {"approval": "required", "approvers": "approvers.yml"}
    quota_file.write_text(yaml.safe_dump(data))
    tokens = {}
    for name in ("wang.fang", "ops.li"):
        code, out, err = cli(capsys, "approver", *common, name)
        assert code == 0, err
        tokens[name] = out.strip()
    assert tokens["ops.li"] not in (quota_file.parent / "approvers.yml").read_text()  # only its hash is kept
    for app in budget_app(quota_file, redis_url):
        refused(app, "carol")
        code, out, err = cli(capsys, "grant", *common, "--user", "carol", "--tokens", "500", "--window", "24h",
                             "--reason", "demo day", "--by", "ops.li")
        assert code == 0, err
        gid = out.split()[0]
        assert "pending" in out
        time.sleep(0.5)
        with pytest.raises(QuotaExceededError):  # a pending request changes nothing
            app.ask("carol")
        monkeypatch.setenv("OTEL_TOKENS_APPROVER_TOKEN", tokens["ops.li"])
        code, _, err = cli(capsys, "approve", *common, gid)
        assert code == 2 and "someone else must approve it" in err  # the requester's own token
        monkeypatch.setenv("OTEL_TOKENS_APPROVER_TOKEN", "not-a-token-of-anyone-at-all")
        code, _, err = cli(capsys, "approve", *common, gid)
        assert code == 2 and "no approver's" in err
        monkeypatch.setenv("OTEL_TOKENS_APPROVER_TOKEN", tokens["wang.fang"])
        code, out, err = cli(capsys, "approve", *common, gid)
        assert code == 0 and "approved by wang.fang" in out, err
        wait_until_served(app, "carol")
    audit = quota_file.parent / "audit.jsonl"
    events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
    assert "grant.requested" in events and "grant.approved" in events
    code, _, err = cli(capsys, "audit", *common, "--verify")
    assert code == 0 and "intact" in err
    lines = audit.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if '"grant.approved"' in line)
    lines[at] = lines[at].replace("wang.fang", "ops.li")  # someone hides who approved
    audit.write_text("\n".join(lines) + "\n")
    code, out, _ = cli(capsys, "audit", *common, "--verify")
    assert code == 1 and f"audit.jsonl:{at + 2}: prev is not the hash of {audit}:{at + 1}" in out
    assert "the log was rewritten after it" in out  # the CLI's anchor: caught even with the chain re-hashed
