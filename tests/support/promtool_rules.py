"""The quota rules rendered and run by the real promtool: the test file, the group order, the helpers that
write input series and expected alerts."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import yaml

from otel_tokens.ops.rules import render_text
from otel_tokens.quota.file import parse_quotas
from otel_tokens.quota.grants.model import Grant
from tests.support.binaries import require_binary

QUOTAS = {
    "warning_ratio": 0.8,
    "users": {"default": {"tokens": 1000, "cost": 1}, "overrides": {"alice": {"tokens": 2000}}},
    "departments": {"default": {"tokens": 10000, "cost": 10}, "overrides": {"support": {"tokens": 20000}}},
}


def annotations(principal: str, name: str, kind: str, severity: str, usage: str, limit: str, percent: str) -> dict:
    what = {("user", "tokens"): "daily token quota", ("user", "cost"): "daily cost quota",
            ("department", "tokens"): "monthly token budget", ("department", "cost"): "monthly cost budget"}
    unit = " tokens" if kind == "tokens" else ""
    verb = "is nearing" if severity == "warning" else "has reached"
    when = "in the last 24 h" if principal == "user" else "this calendar month (UTC)"
    return {"summary": f"{principal.capitalize()} {name} {verb} the {what[principal, kind]} ({percent})",
            "description": f"{principal.capitalize()} {name} used {usage}{unit} of {limit}{unit} ({percent}) {when}.",
            "usage": f"{usage}{unit}", "limit": f"{limit}{unit}", "percent": percent}


def alert(principal: str, name: str, kind: str, severity: str, usage: str, limit: str, percent: str) -> dict:
    label = "user_id" if principal == "user" else "department"
    return {"exp_labels": {label: name, "severity": severity, "window": "24h" if principal == "user" else "month",
                           "quota": kind},
            "exp_annotations": annotations(principal, name, kind, severity, usage, limit, percent)}


def promtool_test(tmp_path: Path, tests: dict, quotas: dict = QUOTAS, today: date | None = None,
                  grants: Sequence[Grant] = ()) -> None:
    """`grants` are rendered as at promtool's time 0 (1970-01-01 00:00 UTC), where its evaluations start."""
    promtool = require_binary("promtool")
    rendered = render_text(parse_quotas(quotas, "test quotas"), today=today, grants=grants, now=0.0)
    (tmp_path / "quotas.yml").write_text(rendered)
    # Without an order promtool runs the groups in Go map order, a different one each run: a chained rollup
    # read in the same step as it is recorded then sometimes sees the step before (CI failed on that once).
    order = [group["name"] for group in yaml.safe_load(rendered)["groups"]]
    (tmp_path / "quotas.test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["quotas.yml"], "group_eval_order": order, **tests}, sort_keys=False, allow_unicode=True))
    result = subprocess.run([promtool, "check", "rules", "quotas.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([promtool, "test", "rules", "quotas.test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
def dept(name: str, values: str, metric: str = "llm_quota_tokens_total") -> dict:
    extra = ',currency="USD"' if metric == "llm_quota_cost_total" else ""
    return {"series": f'{metric}{{department="{name}",user_id="u",gen_ai_token_type="input"{extra},'
                      f'instance="app:9464",job="app"}}', "values": values}
