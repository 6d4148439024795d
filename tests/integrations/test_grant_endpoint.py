"""The guard server's approval endpoint over real HTTP (waitress): only an approver's own token approves, ids and
paths are checked before any file is read, and what waits is listed for a chat-ops bot."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
import yaml

from otel_tokens.ops.alert_endpoint import serve
from otel_tokens.ops.grant_desk import GrantDesk
from otel_tokens.ops.grant_endpoint import GrantEndpoint
from otel_tokens.quota.file import load_quotas
from otel_tokens.quota.grants.approvers import add_approver

GUARD_TOKEN = "guard-token-0123456789abcdef"


@pytest.fixture
def guard(tmp_path):
    quota_file = tmp_path / "quotas.yml"
    quota_file.write_text(yaml.safe_dump({"users": {"default": {"24h": {"tokens": 1000}}},
                                          "grants": {"approval": "required", "approvers": "approvers.yml"}}))
    tokens = {name: add_approver(tmp_path / "approvers.yml", name) for name in ("wang.fang", "li.ming")}
    desk = GrantDesk(load_quotas(quota_file, budget=True))
    server = serve("127.0.0.1", 0, token=GUARD_TOKEN)
    server.app.grants = GrantEndpoint(quota_file)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", desk, tokens
    server.shutdown()


def call(url: str, method: str = "POST", authorization: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": authorization} if authorization else {}
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_only_another_approvers_own_token_approves(guard):
    url, desk, tokens = guard
    made = desk.grant("user", "alice", {"tokens": 500}, "demo", "li.ming", "24h")
    approve = f"{url}/grants/{made.id}/approve"
    assert call(approve)[0] == 401
    assert call(approve, authorization=f"Bearer {GUARD_TOKEN}")[0] == 401  # Alertmanager's and the apps' token
    assert call(approve, authorization=f"Basic {tokens['wang.fang']}")[0] == 401
    status, body = call(approve, authorization=f"Bearer {tokens['li.ming']}")
    assert status == 403 and "someone else must approve" in body["error"]
    status, body = call(f"{url}/grants", "GET", f"Bearer {tokens['wang.fang']}")
    assert status == 200 and [g["id"] for g in body["pending"]] == [made.id]
    status, body = call(approve, authorization=f"Bearer {tokens['wang.fang']}")
    assert status == 200 and (body["by"], body["grant"]["approved_by"]) == ("wang.fang", "wang.fang")
    assert call(approve, authorization=f"Bearer {tokens['wang.fang']}")[0] == 409
    assert desk.file.load()[0].status == "active"


@pytest.mark.parametrize(("path", "method", "status"), [
    ("/grants/g-0123456789ab/approve", "GET", 405),
    ("/grants", "POST", 405),
    ("/grants/G-0123456789AB/approve", "POST", 404),  # ids are lower-case hex only
    ("/grants/g-0123456789ab/approve/../../state", "POST", 404),
    ("/grants/g-0123456789ab/delete", "POST", 404),
    ("/grants/g-0123456789ab%0a/approve", "POST", 404),
])
def test_paths_and_methods_are_checked_before_anything_is_read(guard, path, method, status):
    url, _, tokens = guard
    assert call(f"{url}{path}", method, f"Bearer {tokens['wang.fang']}")[0] == status


def test_an_unknown_grant_is_404_and_the_guard_paths_keep_their_token(guard):
    url, _, tokens = guard
    assert call(f"{url}/grants/g-0123456789ab/reject", authorization=f"Bearer {tokens['wang.fang']}")[0] == 404
    assert call(f"{url}/state", "GET", f"Bearer {tokens['wang.fang']}")[0] == 401  # an approver is not a guard client
