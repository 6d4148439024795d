"""End to end on 127.0.0.1 with the real binaries: the package's metrics, scraped by Prometheus with
the rendered quota rules, alerts routed by Alertmanager (the shipped config) to a webhook here."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_tokens.ops.guard_server import serve
from otel_tokens.ops.rules import render_text
from otel_tokens.quotas import parse_quotas
from tests.support.alert_app import TOKENS_PER_CALL
from tests.support.binaries import require_binary
from tests.support.prometheus_stack import Webhook, free_port, start_prometheus, start_shipped_alertmanager
from tests.support.smtp_sink import SmtpSink

pytestmark = pytest.mark.e2e  # every test here starts a server or a binary

ROOT = Path(__file__).resolve().parents[1]


QUOTAS = {"users": {"default": {"tokens": 100_000}, "overrides": {"alice": {"tokens": 1000}}}}
GUARD_TOKEN = "test-guard-token-0123456789abcdef"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    prometheus = require_binary("prometheus")
    alertmanager = require_binary("prometheus-alertmanager")
    processes: list[subprocess.Popen[Any]] = []
    webhook = Webhook()
    mail = SmtpSink().__enter__()
    try:
        app_port = free_port()
        app = subprocess.Popen([sys.executable, "-m", "tests.support.alert_app", str(app_port)], cwd=ROOT, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(tmp_path / "app.log", "w"))
        processes.append(app)
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"

        # the quota guard's state endpoint, with a token, as the shipped route and receiver reach it
        token_file = tmp_path / "guard-token"
        token_file.write_text(GUARD_TOKEN + "\n")
        guard = serve("127.0.0.1", 0, token=GUARD_TOKEN)
        threading.Thread(target=guard.serve_forever, daemon=True).start()
        guard_url = f"http://127.0.0.1:{guard.server_address[1]}"
        # the shipped Alertmanager config, with this test's receivers and short timers
        am_address, am_process = start_shipped_alertmanager(tmp_path, alertmanager, webhook, guard_url, token_file,
                                                            smtp=mail.smarthost)
        am_port = int(am_address.rsplit(":", 1)[1])
        processes.append(am_process)

        rules = tmp_path / "rules"
        rules.mkdir()
        quota_file = tmp_path / "quotas.yaml"
        quota_file.write_text(yaml.safe_dump(QUOTAS))
        (rules / "quotas.yml").write_text(render_text(parse_quotas(QUOTAS, str(quota_file)), for_="1s"))
        prom_url, prom = start_prometheus(tmp_path, prometheus, [f"127.0.0.1:{app_port}"], str(rules / "*.yml"),
                                          f"127.0.0.1:{am_port}")
        processes.append(prom)

        def generate(user: str, department: str, calls: int) -> float:
            assert app.stdin is not None and app.stdout is not None
            app.stdin.write(f"{user} {department} {calls}\n")
            app.stdin.flush()
            assert app.stdout.readline().strip() == "done"
            return time.monotonic()

        yield {"generate": generate, "webhook": webhook, "prometheus": prom_url,
               "alertmanager": f"http://127.0.0.1:{am_port}", "prom_process": prom, "quota_file": quota_file,
               "rules": rules, "tmp": tmp_path, "guard": guard_url, "guard_server": guard, "mail": mail}
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        webhook.server.shutdown()
        mail.__exit__()
        if "guard" in locals():
            guard.shutdown()


def _is(alertname: str, severity: str, user: str, status: str = "firing") -> Callable[[str, dict[str, Any]], bool]:
    def match(path: str, alert: dict[str, Any]) -> bool:
        labels = alert["labels"]
        return (alert["status"] == status and labels.get("alertname") == alertname
                and labels.get("severity") == severity and labels.get("user_id") == user)
    return match


def test_quota_alerts_end_to_end(stack):
    webhook: Webhook = stack["webhook"]
    generate = stack["generate"]
    start = time.monotonic()
    generate("bob", "research", 3)  # 300 of bob's 100k: nothing

    # alice to 90 % of her 1000-token daily quota: the warning
    crossed = generate("alice", "support", 9)
    arrival, path, alert = webhook.wait_for(_is("LLMUserTokenQuota", "warning", "alice"), start)
    warning_delay = arrival - crossed
    assert path == "/warning"
    assert alert["labels"] == {"alertname": "LLMUserTokenQuota", "severity": "warning", "window": "24h",
                               "quota": "tokens", "user_id": "alice"}
    assert {k: alert["annotations"][k] for k in ("usage", "limit", "percent")} == {
        "usage": f"{9 * TOKENS_PER_CALL} tokens", "limit": "1k tokens", "percent": "90%"}
    assert alert["annotations"]["summary"] == "User alice is nearing the daily token quota (90%)"

    # past 100 %: the critical arrives (email + webhook receiver) and the warning is inhibited
    crossed = generate("alice", "support", 2)
    arrival, path, alert = webhook.wait_for(_is("LLMUserTokenQuota", "critical", "alice"), crossed)
    critical_delay = arrival - crossed
    assert path == "/critical"
    assert alert["annotations"]["percent"] == "110%"
    # the critical route's email, through a real SMTP server: the shipped template's relay and
    # recipient, the alert's annotations in the body
    (received,) = [m for m in stack["mail"].wait() if "LLMUserTokenQuota" in m.message["Subject"]][:1]
    assert received.sender == "alerts@example.test" and received.recipients == ["oncall@example.test"]
    assert received.message["Subject"].startswith("[FIRING:1] LLMUserTokenQuota")
    body = received.message.get_body(("html", "plain")).get_content()
    for text in (alert["annotations"]["summary"], alert["annotations"]["description"], "user_id = alice",
                 "severity = critical"):
        assert text in body, text
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(f"{stack['alertmanager']}/api/v2/alerts") as response:
            alerts = json.load(response)
        warning = [a for a in alerts if a["labels"].get("severity") == "warning"
                   and a["labels"].get("user_id") == "alice"]
        if warning and warning[0]["status"]["state"] == "suppressed":
            break
        assert time.monotonic() < deadline, alerts
        time.sleep(0.5)
    assert warning[0]["status"]["inhibitedBy"]
    time.sleep(3)
    later = [a for t, p, a in webhook.alerts(arrival + 0.01) if a["labels"].get("severity") == "warning"
             and a["labels"].get("user_id") == "alice"]
    assert later == []  # the warning stays quiet while the critical fires
    assert not any(a["labels"].get("user_id") == "bob" for _, _, a in webhook.alerts())

    # lower bob's limit in the quota file, re-render, reload: applies without a restart
    pid = stack["prom_process"].pid
    quotas = {"users": {"default": {"tokens": 100_000}, "overrides": {"alice": {"tokens": 1000},
                                                                       "bob": {"tokens": 350}}}}
    stack["quota_file"].write_text(yaml.safe_dump(quotas))
    reloaded = time.monotonic()
    subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "rules", str(stack["quota_file"]), "-o",
                    str(stack["rules"] / "quotas.yml"), "--for", "1s", "--check", "--reload", stack["prometheus"]],
                   check=True, capture_output=True, cwd=ROOT)
    arrival, path, alert = webhook.wait_for(_is("LLMUserTokenQuota", "warning", "bob"), reloaded)
    assert alert["annotations"]["percent"] == "85.71%"  # 300 of 350
    assert stack["prom_process"].pid == pid and stack["prom_process"].poll() is None
    reload_delay = arrival - reloaded

    print(f"\ncrossing -> notification: warning {warning_delay:.1f}s, critical {critical_delay:.1f}s "
          f"(test timers: scrape/eval 1s, for 1s, group_wait 1s); reload -> notification {reload_delay:.1f}s")


def test_guard_rejects_over_quota_calls_within_seconds_and_allows_them_again(stack):
    import openai

    from otel_tokens import QuotaExceededError, TokenUsageInstrumentor, names, usage_context
    from otel_tokens.config import Settings
    from otel_tokens.guard import GuardRule, GuardSettings
    from tests.support.openai_server import OpenAIServer
    from tests.support.telemetry import make_telemetry

    tel, tracer_provider, meter_provider = make_telemetry()
    instrumentor = TokenUsageInstrumentor()
    guard = GuardSettings(True, stack["guard"] + "/state", 0.2, False, (GuardRule("user", "reject", "critical"),),
                          token=GUARD_TOKEN)
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            settings=Settings(guard=guard))
    try:
        with OpenAIServer() as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)

            def ask(user: str) -> bool:
                """True when the call went through, False when the guard refused it."""
                try:
                    with usage_context(user_id=user, department="support"):
                        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
                    return True
                except QuotaExceededError:
                    return False

            assert ask("alice")
            crossed = stack["generate"]("alice", "support", 11)  # 1100 of 1000 tokens
            while ask("alice"):
                assert time.monotonic() - crossed < 90, "the guard never refused alice"
                time.sleep(0.2)
            reject_delay = time.monotonic() - crossed
            assert ask("bob")  # other users are never affected
            # the same state read straight from Prometheus's alerts API
            from otel_tokens.guard import Guard

            direct = Guard(GuardSettings(True, stack["prometheus"] + "/api/v1/alerts", 1.0, False, guard.rules))
            direct.refresh()
            assert direct.healthy and direct.decide("gpt-4", {names.USER_ID: "alice"}).action == "reject"
            assert direct.decide("gpt-4", {names.USER_ID: "bob"}) is None

            quotas = {"users": {"default": {"tokens": 100_000}, "overrides": {"alice": {"tokens": 5000}}}}
            stack["quota_file"].write_text(yaml.safe_dump(quotas))
            raised = time.monotonic()
            subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "rules", str(stack["quota_file"]), "-o",
                            str(stack["rules"] / "quotas.yml"), "--for", "1s", "--reload", stack["prometheus"]],
                           check=True, capture_output=True, cwd=ROOT)
            while not ask("alice"):
                assert time.monotonic() - raised < 90, "alice was never allowed again"
                time.sleep(0.2)
            allow_delay = time.monotonic() - raised
    finally:
        instrumentor.uninstrument()
    rejected = [s for s in tel.spans() if s.attributes.get(names.LLM_QUOTA_ACTION) == "reject"]
    assert rejected and all(s.attributes[names.USER_ID] == "alice" for s in rejected)
    print(f"\nguard: crossing -> first rejected call {reject_delay:.1f}s; limit raised -> allowed again "
          f"{allow_delay:.1f}s (1 s timers, 0.2 s poll)")


def test_the_guard_is_driven_only_by_alertmanager_and_recovers_its_state(stack):
    """Forged webhooks without the token change nothing; a state lost (restart) or wiped (a forged
    `resolved` with a stolen token) is back from Alertmanager: at once by resync, and by the guard
    route's short repeat_interval without it."""
    from otel_tokens.guard_state import GuardState
    from otel_tokens.ops.guard_resync import Resync, resync

    guard = stack["guard_server"]

    def users(state: GuardState) -> dict[str, str]:
        return {name: entry["severity"] for name, entry in state.snapshot()["users"].items()}

    def post(body: dict, token: str | None) -> int:
        request = urllib.request.Request(stack["guard"] + "/alertmanager", data=json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            return urllib.request.urlopen(request, timeout=10).status
        except urllib.error.HTTPError as error:
            return error.code

    stack["generate"]("alice", "support", 11)  # 1100 of 1000 tokens
    deadline = time.monotonic() + 90
    while users(guard.state).get("alice") != "critical":
        assert time.monotonic() < deadline, "the guard never heard of alice's critical alert"
        time.sleep(0.2)
    resolved = {"alerts": [{"status": "resolved", "labels": {"alertname": "LLMUserTokenQuota", "user_id": "alice",
                                                             "severity": "critical", "window": "24h",
                                                             "quota": "tokens"}}]}
    assert post(resolved, None) == 401 and users(guard.state).get("alice") == "critical"
    # a wiped state comes back with the route's repeat (3 s here, 1 min shipped) plus grouping
    assert post(resolved, GUARD_TOKEN) == 200 and users(guard.state).get("alice") != "critical"
    wiped = time.monotonic()
    while users(guard.state).get("alice") != "critical":
        assert time.monotonic() - wiped < 30, "Alertmanager never repeated alice's alert to the guard"
        time.sleep(0.2)
    repeat_delay = time.monotonic() - wiped
    # a restarted guard, empty: resync from Alertmanager's API restores it at once
    restarted = GuardState()
    assert resync(restarted, stack["alertmanager"]) == "applied" and users(restarted).get("alice") == "critical"
    # and from Prometheus's alerts API, for setups without Alertmanager access
    from_prometheus = GuardState()
    resync(from_prometheus, stack["prometheus"] + "/api/v1/alerts")
    assert users(from_prometheus).get("alice") == "critical"
    # a resync thread keeps the webhook state honest: a forged resolve applied is undone by the next pass
    resyncing = Resync(guard.state, stack["alertmanager"], 1.0)
    assert post(resolved, GUARD_TOKEN) == 200
    assert resyncing.once() and users(guard.state).get("alice") == "critical"
    print(f"\nguard state wiped -> restored by Alertmanager's repeat in {repeat_delay:.1f}s (3 s repeat_interval)")


def test_a_budget_forecast_reaches_people_not_the_guard_and_is_muted_by_the_budget_critical(stack):
    """LLMDepartmentBudgetForecast through the shipped Alertmanager: research's forecast arrives on the
    warning route; support's is inhibited while support's budget critical of the same kind fires; the
    guard hears of neither forecast."""
    from datetime import datetime, timedelta, timezone

    webhook: Webhook = stack["webhook"]
    now = datetime.now(timezone.utc)

    def alert(name: str, severity: str, department: str) -> dict[str, Any]:
        return {"labels": {"alertname": name, "severity": severity, "department": department, "window": "month",
                           "quota": "tokens"},
                "annotations": {"exhaustion": "2026-12-27 10:00:00 +0000 UTC"},
                "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=10)).isoformat()}

    alerts = [alert("LLMDepartmentTokenBudget", "critical", "support"),
              alert("LLMDepartmentBudgetForecast", "warning", "support"),
              alert("LLMDepartmentBudgetForecast", "warning", "research")]
    sent = time.monotonic()
    request = urllib.request.Request(stack["alertmanager"] + "/api/v2/alerts", data=json.dumps(alerts).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    assert urllib.request.urlopen(request, timeout=10).status == 200

    def forecast(department: str) -> Callable[[str, dict[str, Any]], bool]:
        return lambda path, a: (a["labels"].get("alertname") == "LLMDepartmentBudgetForecast"
                                and a["labels"].get("department") == department)

    _, path, got = webhook.wait_for(forecast("research"), sent)
    assert path == "/warning" and got["annotations"]["exhaustion"] == "2026-12-27 10:00:00 +0000 UTC"
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(f"{stack['alertmanager']}/api/v2/alerts") as response:
            state = {(a["labels"]["alertname"], a["labels"].get("department")): a["status"]
                     for a in json.load(response)}
        if state.get(("LLMDepartmentBudgetForecast", "support"), {}).get("state") == "suppressed":
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    assert state[("LLMDepartmentBudgetForecast", "support")]["inhibitedBy"]
    assert state[("LLMDepartmentBudgetForecast", "research")]["state"] == "active"
    time.sleep(3)  # more than the test's group_wait and the guard route's repeat
    assert not [a for _, _, a in webhook.alerts(sent) if forecast("support")("", a)]
    snapshot = stack["guard_server"].state.snapshot()
    assert snapshot["departments"].get("support", {}).get("severity") == "critical"  # the budget, not the forecast
    assert "research" not in snapshot["departments"]
