"""`otel-tokens rules-backfill`: on a Prometheus that holds only raw history, the rolling window of
freshly deployed rules is blind to everything older than its raw partial; the backfilled rollups make
it exact at once after a restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from otel_tokens.ops.backfill import first_level
from otel_tokens.ops.rules import render
from otel_tokens.quota.file import parse_quotas

ROOT = Path(__file__).resolve().parents[2]


QUOTAS = {"users": {"default": {"tokens": 10**9}}, "departments": {"default": {"tokens": 10**9}}}


def test_only_rules_over_raw_data_are_backfilled():
    selected = first_level(render(parse_quotas(QUOTAS, "q")))
    records = [r["record"] for g in selected["groups"] for r in g["rules"]]
    assert records == ["llm_quota:user_tokens:5m", "llm_quota:department_tokens:1h"]
    assert [g.get("interval") for g in selected["groups"]] == ["1m", "4m"]
    exprs = [r["expr"] for g in selected["groups"] for r in g["rules"]]
    # computed from the accounting counters, which hold the history from before llm.quota.* existed
    assert all("llm_token_usage_total{" in e and "llm_quota_tokens_total" not in e for e in exprs)
    live = [r["expr"] for g in first_level(render(parse_quotas(QUOTAS, "q")), "quota")["groups"] for r in g["rules"]]
    assert all("llm_quota_tokens_total{" in e and "llm_token_usage_total" not in e for e in live)
    assert [e.replace("llm_token_usage_total", "llm_quota_tokens_total") for e in exprs] == live


def test_a_rule_file_without_rollups_is_refused_with_a_clear_message(tmp_path):
    rules = tmp_path / "static.yml"
    rules.write_text("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: vector(1)\n")
    out = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "rules-backfill", "--rules", str(rules),
                          "--prometheus", "http://127.0.0.1:9", "--start", "1", "--end", "2", "--output",
                          str(tmp_path / "blocks")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith(f"otel-tokens rules-backfill: {rules}: groups:") and "raw data" in out.stderr


def test_a_record_name_that_is_not_a_metric_name_is_refused_before_any_query(tmp_path):
    rules = tmp_path / "hostile.yml"
    rules.write_text('groups:\n  - name: g\n    rules:\n      - record: \'x"}) or vector(1) or ({a="\'\n'
                     "        expr: sum(llm_quota_tokens_total)\n")
    out = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "rules-backfill", "--rules", str(rules),
                          "--prometheus", "http://127.0.0.1:9", "--start", "1", "--end", "2", "--output",
                          str(tmp_path / "blocks")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith(f"otel-tokens rules-backfill: {rules}: record: ")
    assert "is not a metric name" in out.stderr
    assert not (tmp_path / "blocks").exists()
