"""A grant approved over HTTP on a live stack: a real Prometheus evaluates the rules `otel-tokens rules` rendered
from the quota file; a user at 100 % fires the critical alert; a grant is requested (pending: the rules do not
change) and approved through the guard server's endpoint with the approver's own token, which re-renders the
rules and reloads Prometheus: the alert resolves; at the grant's end the alert fires again with no re-render."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import yaml

from otel_tokens import names
from otel_tokens.ops.alert_endpoint import serve
from otel_tokens.ops.cli import main
from otel_tokens.ops.grant_endpoint import GrantEndpoint
from otel_tokens.ops.rollups import ROLLUP_INTERVAL
from tests.support.binaries import require_binary
from tests.support.fixed_http import serve_get
from tests.support.prometheus_stack import start_prometheus, stop_processes

GUARD_TOKEN = "guard-token-0123456789abcdef"
EXPOSITION = (f"# TYPE {names.PROM_QUOTA_TOKENS} counter\n"
              f'{names.PROM_QUOTA_TOKENS}{{user_id="ann",department="eng"}} 1000\n'
              f'{names.PROM_QUOTA_TOKENS}{{user_id="bo",department="eng"}} 100\n').encode()


def firing(prom: str) -> set[tuple[str, str]]:
    with urllib.request.urlopen(f"{prom}/api/v1/alerts", timeout=10) as response:
        alerts = json.load(response)["data"]["alerts"]
    return {(a["labels"]["user_id"], a["labels"]["severity"]) for a in alerts if a["state"] == "firing"}


def wait(predicate, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def post(url: str, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=b"", method="POST", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_an_approved_grant_resolves_the_alert_live_and_its_end_fires_it_again(tmp_path, capsys):
    prometheus = require_binary("prometheus")
    exporter = serve_get(lambda path: (EXPOSITION, "text/plain; version=0.0.4"))
    quota_file, rules, audit = tmp_path / "quotas.yml", tmp_path / "rules" / "quotas.yml", tmp_path / "audit.jsonl"
    quota_file.write_text(yaml.safe_dump({"users": {"default": {"24h": {"tokens": 1000}}},
                                          "grants": {"approval": "required", "approvers": "approvers.yml",
                                                     "audit_log": "audit.jsonl"}}))
    assert main(["rules", str(quota_file), "-o", str(rules), "--for", "1s"]) == 0
    # the first rollup within seconds, not up to a minute after the start (the approval's re-render writes the
    # shipped 1m again: the alerts go on from what the first one wrote)
    data = yaml.safe_load(rules.read_text())
    for group in data["groups"]:
        if group.get("interval") == ROLLUP_INTERVAL:
            group["interval"] = "5s"
    rules.write_text(yaml.safe_dump(data, sort_keys=False))
    common = ["--quota-file", str(quota_file), "--for", "1s"]
    assert main(["quota", "approver", *common, "wang.fang"]) == 0
    approver_token = capsys.readouterr().out.strip()
    processes = []
    server = serve("127.0.0.1", 0, token=GUARD_TOKEN)
    try:
        prom, process = start_prometheus(tmp_path, prometheus, [f"127.0.0.1:{exporter.server_address[1]}"],
                                         str(rules))
        processes.append(process)
        server.app.grants = GrantEndpoint(quota_file, rules, prom, for_="1s")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        guard = f"http://127.0.0.1:{server.server_address[1]}"
        wait(lambda: ("ann", "critical") in firing(prom), what="ann's critical never fired")

        until = time.time() + 15
        assert main(["quota", "grant", *common, "--rules", str(rules), "--reload", prom, "--user", "ann",
                     "--tokens", "500", "--until", f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(until))}Z",
                     "--reason", "board demo", "--by", "li.ming"]) == 0
        gid = capsys.readouterr().out.split()[0]
        rendered = rules.read_text()
        assert "grant" not in rendered.split("groups:", 1)[1].replace("limit_granted", "")  # pending: not rendered
        assert post(f"{guard}/grants/{gid}/approve", GUARD_TOKEN)[0] == 401  # the guard's token approves nothing
        status, body = post(f"{guard}/grants/{gid}/approve", approver_token)
        assert status == 200 and body["by"] == "wang.fang" and body["grant"]["status"] == "active", body
        assert post(f"{guard}/grants/{gid}/approve", approver_token)[0] == 409  # once
        assert f'grant: {gid}' in rules.read_text()
        wait(lambda: ("ann", "critical") not in firing(prom), what="the grant did not resolve ann's critical")
        stamp = rules.stat().st_mtime_ns
        wait(lambda: ("ann", "critical") in firing(prom), timeout=60, what="the critical did not come back at the end")
        assert time.time() >= until - 1  # not before the grant's end
        assert rules.stat().st_mtime_ns == stamp  # nothing re-rendered
    finally:
        server.shutdown()
        exporter.shutdown()
        stop_processes(processes)
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["event"], e.get("requested_by"), e.get("approved_by")) for e in events] == [
        ("grant.requested", "li.ming", None), ("grant.approved", "li.ming", "wang.fang")]
    assert main(["quota", "audit", *common]) == 0
