"""Quota file validation and the rendered rules, unit-tested with the real `promtool test rules`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from otel_tokens.config.errors import ConfigError
from otel_tokens.ops.rules import render_text
from otel_tokens.quota.file import parse_quotas


@pytest.mark.parametrize(("data", "field", "value"), [
    ({"users": {"default": {"tokens": -5}}}, "users.default.tokens", "-5"),
    ({"users": {"default": {"tokenz": 5}}}, "users.default.tokenz", "5"),
    ({"warning_ratio": 1.5, "users": {"default": {"tokens": 5}}}, "warning_ratio", "1.5"),
    ({"users": {"overrides": {"bob": "lots"}}}, "users.overrides.bob", "'lots'"),
    ({"teams": {}}, "teams", "{}"),
    ({"users": {"default": {}}}, "users.default", "{}"),
])
def test_bad_quota_files_are_refused_naming_field_and_value(data, field, value):
    with pytest.raises(ConfigError) as caught:
        parse_quotas(data, "quota file q.yaml")
    message = str(caught.value)
    assert message.startswith("quota file q.yaml: ") and field in message and value in message, message


def test_shipped_rule_file_is_the_rendering_of_the_shipped_quota_file():
    root = Path(__file__).resolve().parents[2]
    from otel_tokens.quota.file import load_quotas

    rendered = render_text(load_quotas(Path("collector/quotas.yaml")))
    assert (root / "collector" / "rules" / "quotas.yml").read_text() == rendered, textwrap.dedent("""
        collector/rules/quotas.yml is stale: run
        otel-tokens rules collector/quotas.yaml -o collector/rules/quotas.yml --check""")


def test_every_problem_of_a_quota_file_is_reported_at_once(tmp_path):
    from otel_tokens.quota.file import load_quotas

    path = tmp_path / "q.yaml"
    path.write_text("warning_ratio: 2\nusers:\n  default: {tokens: -5, cost: .inf}\n  overrides:\n"
                    "    bob: {tokns: 10}\ndepartments: {defaults: {}}\nteams: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_quotas(path)
    message = str(caught.value)
    assert str(path) in message and "6 problems" in message, message
    for part in ("warning_ratio: 2", "users.default.tokens: -5", "users.default.cost: inf",
                 "users.overrides.bob.tokns: 10", "departments.defaults", "teams"):
        assert part in message, (part, message)
    path.write_text("")
    with pytest.raises(ConfigError, match=r"is empty: a quota file sets `users:`, `departments:` and/or `apps:`"):
        load_quotas(path)


def test_limits_written_as_yaml_reads_them_are_numbers():
    """`tokens: 1e3` is text to YAML 1.1 (no dot): it said "is not a positive number"."""
    quotas = parse_quotas(yaml.safe_load("users:\n  default: {tokens: 1e3, cost: 2_000}\n"
                                         "  overrides: {bob: {tokens: 2.5E+4}}\n"), "q.yml")
    assert quotas.users.default.tokens == 1000 and quotas.users.default.cost == 2000
    assert quotas.users.overrides["bob"].tokens == 25_000
    with pytest.raises(ConfigError, match=r"'lots' is not a positive number \(write 200000, 2e5 or 200_000\)"):
        parse_quotas({"users": {"default": {"tokens": "lots"}}}, "q.yml")


def test_what_the_window_reads_every_evaluation_does_not_grow_with_the_window():
    """The cost structure the scale bench measured (bench/quota_rules_scale.py): every 10 s the users'
    window reads each raw series twice and the recorded parts over minutes, never the 288 rollups of a
    day nor a subquery; the 24 h of rollups are summed in the once-a-minute group, as of a boundary, in
    a group of their own evaluated once per bucket (the department's hour: by the evaluations after it ends)."""
    groups = {g["name"]: g for g in yaml.safe_load(render_text(parse_quotas(
        {"users": {"default": {"tokens": 1, "cost": 1}}, "departments": {"default": {"tokens": 1, "cost": 1}}},
        "q")))["groups"]}
    for kind, counter in (("tokens", "llm_quota_tokens_total"), ("cost", "llm_quota_cost_total")):
        (window,) = [r["expr"] for r in groups["llm_quota_users"]["rules"]
                     if r.get("record") == f"llm_quota:user_{kind}:24h"]
        assert window.count(counter + "{") == 2
        assert f"llm_quota:user_{kind}:5m" not in window and ":5m]" not in window and "[24h]" not in window
        (fallback,) = [r["expr"] for r in groups["llm_quota_user_rollups"]["rules"]
                       if r.get("record") == f"llm_quota:user_{kind}:24h_parts"]
        assert fallback.count(counter + "{") == 1 and "[5m:5m]" not in fallback  # every minute, while parts are stale
        (parts,) = [r["expr"] for r in groups["llm_quota_user_parts"]["rules"]
                    if r.get("record") == f"llm_quota:user_{kind}:24h_parts"]
        assert f"sum_over_time(llm_quota:user_{kind}:5m[24h])" in parts and ")[5m:5m]" in parts
        (hour,) = [r["expr"] for r in groups["llm_quota_department_rollups"]["rules"]
                   if r.get("record") == f"llm_quota:department_{kind}:1h"]
        assert hour.startswith("last_over_time(") and hour.endswith(")[15m:1h]\n)")
        # a user's limit once a minute: the ratio divides by the limit values, not by 10,000 limit series
        (ratio,) = [r["expr"] for r in groups["llm_quota_users"]["rules"]
                    if r.get("record") == f"llm_quota:user_{kind}:ratio"]
        assert f"llm_quota:user_{kind}:limit_default" in ratio and f"llm_quota:user_{kind}:limit\n" not in ratio
        assert [r for r in groups["llm_quota_user_rollups"]["rules"] if r["record"] == f"llm_quota:user_{kind}:limit"]
        assert "label_replace" not in window  # costlier than the reads at 10,000 users: terms told apart by labels
    assert groups["llm_quota_user_rollups"]["interval"] == "1m" and "interval" not in groups["llm_quota_users"]
    assert groups["llm_quota_department_rollups"]["interval"] == "4m"  # within the 5 min an instant read sees
    assert groups["llm_quota_user_parts"]["interval"] == "5m"
