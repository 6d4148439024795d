"""The examples users copy, run as users run them: under `opentelemetry-instrument`, against a local
OpenAI-compatible server; and the demo in its fast mode (the same path as `make demo`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import console_output
from tests.support.binaries import require_binary
from tests.support.openai_server import OpenAIServer

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run_example(name: str, server: OpenAIServer) -> list[dict]:
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "local", "MODEL": "gpt-4",
           "OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "console", "OTEL_LOGS_EXPORTER": "none",
           "OTEL_SERVICE_NAME": "example"}
    result = subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable, f"examples/{name}"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return console_output.spans(result.stdout)


@pytest.mark.parametrize(("example", "users"), [("openai_client.py", ["alice", "alice"]),
                                                 ("langchain_chat.py", ["bob", "carol"])])
def test_openai_and_langchain_examples_record_attributed_usage(example, users):
    with OpenAIServer() as server:
        spans = _run_example(example, server)
    assert [s["attributes"]["user.id"] for s in spans] == users
    assert all(s["attributes"]["gen_ai.usage.output_tokens"] > 0 for s in spans)
    assert {s["name"] for s in spans} == {"chat gpt-4"}


def test_demo_fast_mode_shows_users_both_alerts_both_guards_and_agreeing_counts():
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    require_binary("redis-server")
    result = subprocess.run([sys.executable, "examples/demo.py", "--fast"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "WARNING alert received" in out and "CRITICAL alert received" in out
    # which user's alert arrives first is timing (eve can cross 100 % before batch-bot nears 80 %): not checked
    assert re.search(r"WARNING alert received after \d+s: User (batch-bot|eve) ", out), out[-3000:]
    assert re.search(r"CRITICAL alert received after \d+s: User eve ", out), out[-3000:]
    for user in ("alice", "bob", "carol", "dave", "batch-bot", "eve"):
        assert user in out
    assert "they agree" in out
    # budget mode refuses the runaway batch job at the call that would cross 100 %, and serves the others
    refused = out.index("kb-chat: refused: user 'batch-bot' would go over the 24h tokens quota")
    assert refused < out.index("served bob after the refusal")
    hard = re.search(r"batch-bot in kb-chat \(budget mode\): stopped at ([\d.]+)% of its 24h quota "
                     r"\(([\d,]+) of 1,500 tokens by Prometheus; the budget store holds ([\d,]+)\)", out)
    assert hard and float(hard[1]) <= 100 and hard[2] == hard[3], out[-3000:]
    # its last call was shortened to what remained (fit, the prompt counted with the model's tokenizer): it ends
    # at its quota, not refused with room left (91 % before fit)
    assert float(hard[1]) >= 99, out[-3000:]
    shortened = re.search(r"kb-chat: shortened: asked for 160 tokens, answered with (\d+) \(finish_reason length\)",
                          out)
    assert shortened and 16 <= int(shortened[1]) < 160 and out.index(shortened[0]) < refused, out[-3000:]
    # what the app itself can show its user (quota_status): the store's count, the department's month in the
    # quota file's zone (it begins at 00:00 in Asia/Shanghai)
    status = re.search(r"kb-chat: status the app can show its user: batch-bot 24h tokens ([\d,]+) of 1,500 "
                       r"\(\d+%, rolling\); batch-bot day tokens ([\d,]+) of 40,000 \(\d+%, resets "
                       r"\d{4}-\d{2}-\d{2} 00:00 CST\); batch-bot month cost [\d.]+ of 5.00 USD \(\d+%, resets "
                       r"\d{4}-\d{2}-01 00:00 CST\); operations month tokens [\d,]+ of 1,000,000 \(\d+%, resets "
                       r"\d{4}-\d{2}-01 00:00 CST\); operations month cost [\d.]+ of 100.00 USD \(\d+%, resets ", out)
    assert status and status[1] == hard[3], out[-3000:]
    # the day began at local midnight: all of it when the demo did not cross 00:00 in Shanghai
    assert int(status[2].replace(",", "")) <= int(status[1].replace(",", ""))
    # the digest's quota table: every window of a user, the day and the month reset at local midnight (UTC+8)
    local_midnight = r"\d{4}-\d{2}-\d{2} 00:00 \+08:00"
    for window, limit, resets in (("rolling 24 h", "1,500", "—"), ("today", "40,000", local_midnight)):
        assert re.search(rf"user eve\s+tokens\s+{window}\s+[\d,]+\s+{limit}\s+[\d.]+ %\s+{resets}", out), out[-3000:]
    assert re.search(r"user eve\s+cost \(USD\)\s+this month\s+[\d.]+\s+5\.00\s+[\d.]+ %\s+"
                     r"\d{4}-\d{2}-01 00:00 \+08:00", out), out[-3000:]
    # the apps (their service.name) have budgets too: the report's apps table, its digest line and quota rows
    for app in ("kb-chat", "nightly-job"):
        assert re.search(rf"app {app}\s+cost \(USD\)\s+this month\s+[\d.]+\s+50\.00\s+[\d.]+ %", out), out[-3000:]
    assert re.search(r"mostly from app (kb-chat|nightly-job) \(", out), out[-3000:]  # by cost: fast mode varies
    # alert mode refuses the nightly job only once its critical alert fires: past its quota
    assert "nightly-job: refused: user 'eve' is over the 24h tokens quota" in out
    # past its warning the nightly job's paid calls were served by the local model server (a downgrade to another
    # endpoint), before its critical refused it
    moved = out.index("nightly-job: served by the local model: asked gpt-4o, answered by tiny-chat-model")
    assert moved < out.index("nightly-job: refused: user 'eve'")
    split = re.search(r"eve's nightly job asked the paid gpt-4o: ([\d,]+) tokens served by it, ([\d,]+) by the local "
                      r"model after its warning", out)
    assert split and int(split[1].replace(",", "")) >= 1200 and int(split[2].replace(",", "")) > 0, out[-3000:]
    soft = re.search(r"eve in nightly-job \(alert mode\): stopped at ([\d.]+)% of its 24h quota", out)
    assert soft and float(soft[1]) >= 100
    # an operator's grant: eve's 24 h raised for an hour, the rules re-rendered, her critical resolves, audited
    granted = r"GRANT: g-[0-9a-f]+ active: grant of \d+ tokens to user 'eve' in the 24h window"
    assert re.search(granted, out), out[-3000:]
    assert re.search(r"eve's critical alert resolved after the grant: 50% of her 24h limit", out), out[-3000:]
    assert re.search(r"audit log: .*audit.jsonl: intact", out), out[-3000:]
