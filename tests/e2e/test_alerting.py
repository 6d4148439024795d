"""End to end on 127.0.0.1 with the real binaries: the package's metrics, scraped by Prometheus with
the rendered quota rules, alerts routed by Alertmanager (the shipped config) to a webhook here."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_tokens.config.settings import AlertSettings
from otel_tokens.ops.rules import render_text
from otel_tokens.quota.file import parse_quotas
from tests.support.alert_app import TOKENS_PER_CALL
from tests.support.binaries import require_binary
from tests.support.guard_endpoint import GuardEndpoint
from tests.support.prometheus_stack import (
    Webhook,
    free_port,
    open_url,
    start_process,
    start_prometheus,
    start_shipped_alertmanager,
    stop_processes,
    web_auth,
)
from tests.support.quick_rules import quick_hourly_group
from tests.support.smtp_sink import SmtpSink

ROOT = Path(__file__).resolve().parents[2]


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
        guard = GuardEndpoint(GUARD_TOKEN)
        guard_url = guard.url
        # the shipped Alertmanager config, with this test's receivers and short timers
        # basic auth on Prometheus and Alertmanager, as the shipped compose runs them: every client of theirs
        # here (Prometheus itself, the guard, `otel-tokens rules --reload`, these tests) sends the password
        auth = web_auth(tmp_path)
        am_address, am_process = start_shipped_alertmanager(tmp_path, alertmanager, webhook, guard_url, token_file,
                                                            smtp=mail.smarthost, auth=auth)
        am_port = int(am_address.rsplit(":", 1)[1])
        processes.append(am_process)

        rules = tmp_path / "rules"
        rules.mkdir()
        quota_file = tmp_path / "quotas.yaml"
        quota_file.write_text(yaml.safe_dump(QUOTAS))
        rendered = render_text(parse_quotas(QUOTAS, str(quota_file)), for_="1s")
        (rules / "quotas.yml").write_text(quick_hourly_group(rendered))
        prom_url, prom = start_prometheus(tmp_path, prometheus, [f"127.0.0.1:{app_port}"], str(rules / "*.yml"),
                                          f"127.0.0.1:{am_port}", auth=auth)
        processes.append(prom)
        guard.follow([prom_url])  # the ruler's own alert state; Alertmanager's webhook prompts a re-read

        def restart_prometheus() -> None:
            """The same Prometheus (port, data, rules) stopped and started again."""
            old = processes[2]
            old.terminate()
            old.wait(timeout=30)
            processes[2] = start_process(list(old.args), tmp_path, "prometheus-restarted")  # type: ignore[arg-type]

        def generate(user: str, department: str, calls: int) -> float:
            assert app.stdin is not None and app.stdout is not None
            app.stdin.write(f"{user} {department} {calls}\n")
            app.stdin.flush()
            assert app.stdout.readline().strip() == "done"
            return time.monotonic()

        yield {"generate": generate, "webhook": webhook, "prometheus": prom_url,
               "alertmanager": prom_url.rsplit("@", 1)[0] + f"@127.0.0.1:{am_port}", "prom_process": prom,
               "restart_prometheus": restart_prometheus, "quota_file": quota_file,
               "rules": rules, "tmp": tmp_path, "guard": guard_url, "guard_server": guard, "mail": mail}
    finally:
        stop_processes(processes)
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
        with open_url(f"{stack['alertmanager']}/api/v2/alerts") as response:
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
    from otel_tokens.config.settings import GuardRule, GuardSettings, Settings
    from tests.support.openai_server import OpenAIServer
    from tests.support.telemetry import make_telemetry

    tel, tracer_provider, meter_provider = make_telemetry()
    instrumentor = TokenUsageInstrumentor()
    guard = GuardSettings(AlertSettings(stack["guard"] + "/state", 0.2, token=GUARD_TOKEN),
                          rules=(GuardRule("user", "reject", "critical"),))
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
            from otel_tokens.quota.alert.mode import AlertMode

            direct = AlertMode(GuardSettings(AlertSettings(stack["prometheus"] + "/api/v1/alerts", 1.0),
                                             rules=guard.rules))
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


def test_alert_mode_believes_only_the_ruler_and_a_ruler_restart_lifts_no_block(stack):
    """Alertmanager's API takes alerts from anyone who reaches it: a forged firing alert for carol and
    forged resolutions of alice's critical, posted there and (with the guard's token) to the guard's
    webhook, change no enforcement; the guard follows Prometheus's own /api/v1/alerts. A Prometheus
    restart, whose alert list is empty until `for:` has passed again, keeps alice blocked."""
    from datetime import datetime, timedelta, timezone

    from otel_tokens.ops.alert_resync import sync
    from otel_tokens.quota.alert.ruler import Rulers

    guard = stack["guard_server"]

    def users() -> dict[str, str]:
        return {name: entry["severity"] for name, entry in guard.state.snapshot()["users"].items()}

    def post(url: str, body: Any, token: str | None = None) -> int:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        try:
            return open_url(url, data=json.dumps(body).encode(), method="POST", headers=headers, timeout=10).status
        except urllib.error.HTTPError as error:
            return error.code

    stack["generate"]("alice", "support", 11)  # 1100 of 1000 tokens
    deadline = time.monotonic() + 90
    while users().get("alice") != "critical":
        assert time.monotonic() < deadline, "the guard never saw alice's critical alert in Prometheus"
        time.sleep(0.2)

    now = datetime.now(timezone.utc)
    labels = {"alertname": "LLMUserTokenQuota", "severity": "critical", "window": "24h", "quota": "tokens"}
    carol = {"labels": {**labels, "user_id": "carol"}, "startsAt": now.isoformat(),
             "endsAt": (now + timedelta(minutes=10)).isoformat()}
    alice_resolved = {"labels": {**labels, "user_id": "alice"}, "startsAt": (now - timedelta(hours=1)).isoformat(),
                      "endsAt": (now - timedelta(seconds=1)).isoformat()}
    webhook = {"version": "4", "status": "firing", "alerts": [
        {"status": "firing", "labels": carol["labels"], "annotations": {}},
        {"status": "resolved", "labels": alice_resolved["labels"], "annotations": {}}]}
    attacked = time.monotonic()
    while time.monotonic() - attacked < 6:  # as the attack did: resolve alice again and again
        assert post(stack["alertmanager"] + "/api/v2/alerts", [carol, alice_resolved]) == 200
        assert post(stack["guard"] + "/alertmanager", webhook, GUARD_TOKEN) == 200  # a prompt, not a fact
        time.sleep(0.3)
        assert users() == {"alice": "critical"}
    with open_url(stack["alertmanager"] + "/api/v2/alerts?active=true", timeout=10) as response:
        held = {a["labels"].get("user_id") for a in json.load(response)}
    assert "carol" in held  # the forgery reached Alertmanager; it just does not count

    # a ruler restart: Prometheus's alert list is empty until the rules ran and `for:` passed again
    rulers = Rulers([stack["prometheus"]])
    stack["restart_prometheus"]()
    restarted, seen_empty = time.monotonic(), False
    while time.monotonic() - restarted < 12:
        try:
            answer = rulers.read()
        except OSError:
            time.sleep(0.05)  # not listening yet
            continue
        if not any(key[1] == "alice" for key in answer.firing):
            seen_empty = True
        sync(guard.state, rulers)  # what the guard's own thread does every second, here as fast as it can
        assert users() == {"alice": "critical"}, "a restarted Prometheus unblocked alice"
        time.sleep(0.05)
    assert seen_empty, "Prometheus's alert list was never empty after its restart: the restart was not tested"
    assert any(key[1] == "alice" for key in rulers.read().firing)  # and alice's alert is back in Prometheus


def test_a_budget_forecast_reaches_people_not_the_guard_and_is_muted_by_the_budget_critical(stack):
    """LLMDepartmentBudgetForecast through the shipped Alertmanager: research's forecast arrives on the
    warning route; support's is inhibited while support's budget critical of the same kind and window fires, its
    year's forecast is not; the guard hears of no forecast."""
    from datetime import datetime, timedelta, timezone

    webhook: Webhook = stack["webhook"]
    now = datetime.now(timezone.utc)

    def alert(name: str, severity: str, department: str, window: str = "month") -> dict[str, Any]:
        return {"labels": {"alertname": name, "severity": severity, "department": department, "window": window,
                           "quota": "tokens"},
                "annotations": {"exhaustion": "2026-12-27 10:00:00 +0000 UTC"},
                "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=10)).isoformat()}

    alerts = [alert("LLMDepartmentTokenBudget", "critical", "support"),
              alert("LLMDepartmentBudgetForecast", "warning", "support"),
              alert("LLMDepartmentBudgetForecast", "warning", "research"),
              alert("LLMDepartmentBudgetForecast", "warning", "support", "year")]
    sent = time.monotonic()
    assert open_url(stack["alertmanager"] + "/api/v2/alerts", data=json.dumps(alerts).encode(), method="POST",
                    headers={"Content-Type": "application/json"}).status == 200

    def forecast(department: str) -> Callable[[str, dict[str, Any]], bool]:
        return lambda path, a: (a["labels"].get("alertname") == "LLMDepartmentBudgetForecast"
                                and a["labels"].get("department") == department)

    _, path, got = webhook.wait_for(forecast("research"), sent)
    assert path == "/warning" and got["annotations"]["exhaustion"] == "2026-12-27 10:00:00 +0000 UTC"
    deadline = time.monotonic() + 30
    while True:
        with open_url(f"{stack['alertmanager']}/api/v2/alerts") as response:
            state = {(a["labels"]["alertname"], a["labels"].get("department"), a["labels"].get("window")): a["status"]
                     for a in json.load(response)}
        if state.get(("LLMDepartmentBudgetForecast", "support", "month"), {}).get("state") == "suppressed":
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    assert state[("LLMDepartmentBudgetForecast", "support", "month")]["inhibitedBy"]
    assert state[("LLMDepartmentBudgetForecast", "research", "month")]["state"] == "active"
    assert state[("LLMDepartmentBudgetForecast", "support", "year")]["state"] == "active"
    time.sleep(3)  # more than the test's group_wait and the guard route's repeat
    assert [a["labels"]["window"] for _, _, a in webhook.alerts(sent) if forecast("support")("", a)] == ["year"]
    # the guard acts on neither forecast, nor on the budget critical posted here: Prometheus does not hold it
    assert stack["guard_server"].state.snapshot()["departments"] == {}


def test_one_apps_budget_critical_never_mutes_another_apps_warning(stack):
    """The shipped inhibit rule with service_name in `equal`: kb-chat's critical mutes kb-chat's warning of the
    same window only, and batch-summarize's warning of the same alertname and window reaches people; kb-chat's
    forecast is muted by its own critical, batch-summarize's is not."""
    from datetime import datetime, timedelta, timezone

    webhook: Webhook = stack["webhook"]
    now = datetime.now(timezone.utc)

    def alert(name: str, severity: str, app: str) -> dict[str, Any]:
        return {"labels": {"alertname": name, "severity": severity, "service_name": app, "window": "month",
                           "quota": "cost"},
                "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=10)).isoformat()}

    alerts = [alert("LLMAppCostBudget", "critical", "kb-chat"), alert("LLMAppCostBudget", "warning", "kb-chat"),
              alert("LLMAppCostBudget", "warning", "batch-summarize"),
              alert("LLMAppBudgetForecast", "warning", "kb-chat"),
              alert("LLMAppBudgetForecast", "warning", "batch-summarize")]
    sent = time.monotonic()
    assert open_url(stack["alertmanager"] + "/api/v2/alerts", data=json.dumps(alerts).encode(), method="POST",
                    headers={"Content-Type": "application/json"}).status == 200
    _, path, _ = webhook.wait_for(lambda p, a: a["labels"].get("service_name") == "batch-summarize"
                                  and a["labels"]["alertname"] == "LLMAppCostBudget", sent)
    assert path == "/warning"
    deadline = time.monotonic() + 30
    while True:
        with open_url(f"{stack['alertmanager']}/api/v2/alerts") as response:
            state = {(a["labels"]["alertname"], a["labels"]["service_name"], a["labels"]["severity"]): a["status"]
                     for a in json.load(response) if "service_name" in a["labels"]}
        muted = {key for key, status in state.items() if status["state"] == "suppressed"}
        if len(state) == 5 and muted == {("LLMAppCostBudget", "kb-chat", "warning"),
                                         ("LLMAppBudgetForecast", "kb-chat", "warning")}:
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    assert state[("LLMAppBudgetForecast", "batch-summarize", "warning")]["state"] == "active"
