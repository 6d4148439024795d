"""The directory under a real app: a FastAPI app under `opentelemetry-instrument uvicorn` that knows only the user
(an authenticating proxy's X-Forwarded-User, and its group list) gets each user's department from the operator's
directory file, or from the one department the proxy's groups mean;
the department rules of a real Prometheus alert on the directory's departments; the file edited while the app
runs moves a user from the next calls on; a malformed edit keeps the last good directory and the log names the
file and the line; the app's own usage_context still wins."""

from __future__ import annotations

import time
from pathlib import Path

from otel_tokens import names
from otel_tokens.ops.rules import render_text
from otel_tokens.quota.file import parse_quotas
from tests.support.binaries import require_binary
from tests.support.openai_server import OpenAIServer
from tests.support.prometheus_stack import free_port, query, start_prometheus, wait_http
from tests.support.web_requests import post, start_web_app, tokens_by_principal

U = names.UNATTRIBUTED
# support's day is spent at its first call: the department the directory gives bob is the one alerted
QUOTAS = {"departments": {"default": {"day": {"tokens": 10**9}}, "overrides": {"support": {"day": {"tokens": 1}}}},
          # the app (OTEL_SERVICE_NAME) is a scope too: kb-chat's day is spent at its first call
          "apps": {"default": {"day": {"tokens": 10**9}}, "overrides": {"kb-chat": {"day": {"tokens": 1}}}}}


def _post(url: str, user: str | None, groups: str | None = None) -> None:
    headers = [("X-Forwarded-User", user)] if user is not None else []
    assert post(url, headers + ([("X-Forwarded-Groups", groups)] if groups is not None else [])) == 200


def _write(path: Path, text: str) -> None:
    """As an operator's tool writes it: a new file renamed over the old one."""
    spare = path.with_suffix(".tmp")
    spare.write_text(text)
    spare.replace(path)


def test_the_directory_gives_each_proxied_user_their_department_and_follows_edits(tmp_path):
    prometheus = require_binary("prometheus")
    directory = tmp_path / "directory.csv"
    directory.write_text("user_id,department\nalice,research\nbob,support\n")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "quotas.yml").write_text(render_text(parse_quotas(QUOTAS, "q"), for_="1s"))
    with OpenAIServer() as model:
        port, metrics_port = free_port(), free_port()
        prom_url, prom = start_prometheus(tmp_path, prometheus, [f"127.0.0.1:{metrics_port}"],
                                          str(tmp_path / "rules" / "*.yml"))
        process = start_web_app(port, metrics_port, model.base_url, "kb-chat", {
            "OTEL_TOKENS_TRUSTED_HEADERS": "user.id=X-Forwarded-User", "OTEL_TOKENS_TRUSTED_PROXIES": "127.0.0.1",
            "OTEL_TOKENS_DIRECTORY": str(directory), "OTEL_TOKENS_PRICE_RELOAD_INTERVAL": "0.2",
            "OTEL_TOKENS_TRUSTED_GROUPS": "X-Forwarded-Groups:cs-team=support,ai-lab=research"})
        try:
            base, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
            wait_http(f"{base}/docs")
            for user in ("alice", "bob", "bob", "carol", None):
                _post(f"{base}/chat", user)
            # users the directory does not list: the department their proxy's groups mean, if only one
            _post(f"{base}/chat", "erin", "staff,cs-team")
            _post(f"{base}/chat", "frank", "cs-team,ai-lab")
            _post(f"{base}/chat-as-app", "alice")  # the app's own usage_context: its department, not alice's
            usage = tokens_by_principal(metrics)
            per_call = usage[("alice", "research")]
            assert per_call > 0
            assert usage == {("alice", "research"): per_call, ("bob", "support"): 2 * per_call,
                             ("carol", U): per_call, (U, U): per_call, ("service-account", "platform"): per_call,
                             ("erin", "support"): per_call, ("frank", U): per_call}
            # the department rules see the directory's departments: support's day budget alerts, no other's
            deadline = time.monotonic() + 240  # the day's 5-minute machinery: about 50 s here
            alert = 'ALERTS{alertname="LLMDepartmentTokenBudget", alertstate="firing", severity="critical"}'
            while not (firing := query(prom_url, alert)):
                assert time.monotonic() < deadline, "support's budget never alerted"
                time.sleep(0.5)
            assert [(a["metric"]["department"], a["metric"]["window"]) for a in firing] == [("support", "day")]
            # the app's rules read the service_name the package put on its points (direct scrape: no collector)
            app_alert = alert.replace("LLMDepartmentTokenBudget", "LLMAppTokenBudget")
            while not (firing := query(prom_url, app_alert)):
                assert time.monotonic() < deadline, "kb-chat's budget never alerted"
                time.sleep(0.5)
            assert [(a["metric"]["service_name"], a["metric"]["window"]) for a in firing] == [("kb-chat", "day")]
            spent = 'llm_quota:app_tokens:day{service_name="kb-chat"}'
            while [float(v["value"][1]) for v in query(prom_url, spent)] != [sum(usage.values())]:
                assert time.monotonic() < deadline, (query(prom_url, spent), sum(usage.values()))
                time.sleep(0.5)

            # bob moves to sales: calls after the reload are charged there, those before stay with support
            _write(directory, "user_id,department\nalice,research\nbob,sales\n")
            moved_after, deadline = 0, time.monotonic() + 15
            while tokens_by_principal(metrics).get(("bob", "sales"), 0) == 0:
                assert time.monotonic() < deadline, "the edited directory was never read"
                _post(f"{base}/chat", "bob")
                moved_after += 1
                time.sleep(0.1)
            usage = tokens_by_principal(metrics)
            assert usage[("bob", "support")] + usage[("bob", "sales")] == (2 + moved_after) * per_call
            assert usage[("bob", "sales")] == per_call  # one call after the edit was read, the rest before

            # a malformed edit (a list where one department goes) keeps bob in sales, and says where
            directory.write_text('user_id,department\nalice,research\nbob,"sales,support"\n')
            time.sleep(1.5)  # several checks: the edit has stood still and been read (and refused)
            _post(f"{base}/chat", "bob")
            assert tokens_by_principal(metrics)[("bob", "sales")] == 2 * per_call
        finally:
            process.terminate()
            output = process.communicate(timeout=30)[0]
            prom.terminate()
            prom.wait(timeout=30)
    assert f"directory {directory}: line 3, column department: 'sales,support' is not one id" in output, output[-3000:]
    assert "keeping the 2 users read earlier" in output, output[-3000:]
