"""The quota file's windows and time zone: the issue's example, the short form's old meaning, per-window and
per-kind inheritance of overrides, and every bad value named."""

from __future__ import annotations

import pytest
import yaml

from otel_tokens.config.errors import ConfigError
from otel_tokens.quota.file import Limits, parse_quotas
from otel_tokens.quota.vocabulary import DEPARTMENT, USER

EXAMPLE = """
timezone: Asia/Shanghai
users:
  default: {day: {tokens: 200000}, month: {cost: 50}}
  overrides: {nightly-batch: {day: {tokens: 2000000}}}
departments:
  default: {month: {tokens: 50000000, cost: 500}, year: {cost: 5000}}
  overrides: {support: {year: {cost: 12000}}}
"""


def test_the_issue_example_reads_as_windows_per_scope():
    quotas = parse_quotas(yaml.safe_load(EXAMPLE), "q.yml")
    assert quotas.timezone == "Asia/Shanghai"
    assert quotas.scope_windows(USER) == ["day", "month"] and quotas.scope_windows(DEPARTMENT) == ["month", "year"]
    day = quotas.limits(USER, "day")
    assert day.default == Limits(tokens=200000) and day.of("nightly-batch") == Limits(tokens=2_000_000)
    assert quotas.limits(USER, "month").of("nightly-batch") == Limits(cost=50)  # the default's other window
    assert quotas.limits(USER, "24h").kinds() == [] and not quotas.users.kinds()  # no rolling window set
    assert quotas.departments.default == Limits(tokens=50_000_000, cost=500)  # the departments' own window
    assert quotas.limits(DEPARTMENT, "year").of("support") == Limits(cost=12000)
    assert quotas.limits(DEPARTMENT, "year").of("sales") == Limits(cost=5000)


def test_the_short_form_keeps_its_meaning_in_utc():
    quotas = parse_quotas({"users": {"default": {"tokens": 100}, "overrides": {"bob": {"cost": 2}}},
                           "departments": {"default": {"cost": 9}}}, "q.yml")
    assert quotas.timezone == "UTC"
    assert quotas.scope_windows(USER) == ["24h"] and quotas.scope_windows(DEPARTMENT) == ["month"]
    assert quotas.users.of("bob") == Limits(tokens=100, cost=2)
    assert quotas.limits(USER) is quotas.users and quotas.limits(DEPARTMENT, "month") is quotas.departments


def test_short_and_windowed_forms_mix_across_principals_not_within_one():
    quotas = parse_quotas({"users": {"default": {"tokens": 100}, "overrides": {"bob": {"day": {"tokens": 5}}}}},
                          "q.yml")
    assert quotas.scope_windows(USER) == ["24h", "day"]
    assert quotas.limits(USER, "day").of("alice") == Limits() and quotas.limits(USER, "day").of("bob").tokens == 5
    with pytest.raises(ConfigError, match=r"users.default: .* mixes limits \(tokens\) with windows \(day\)"):
        parse_quotas({"users": {"default": {"tokens": 1, "day": {"tokens": 2}}}}, "q.yml")


@pytest.mark.parametrize(("data", "field", "says"), [
    ({"timezone": "Asia/Shangai", "users": {"default": {"tokens": 1}}}, "timezone: 'Asia/Shangai'",
     "is not an IANA time zone known to this machine's tzdata (did you mean Asia/Shanghai?)"),
    ({"timezone": "asia/shanghai", "users": {"default": {"tokens": 1}}}, "timezone: 'asia/shanghai'",
     "did you mean Asia/Shanghai?"),
    ({"timezone": 8, "users": {"default": {"tokens": 1}}}, "timezone: 8", "is not an IANA time zone name"),
    ({"users": {"default": {"fortnight": {"tokens": 1}}}}, "users.default.fortnight",
     "is not a known field (tokens, cost, or a window: minute, concurrent, 24h, day, week, month, year)"),
    ({"users": {"default": {"day": {"tokens": -1}}}}, "users.default.day.tokens: -1", "is not a positive number"),
    ({"users": {"default": {"day": 5}}}, "users.default.day: 5", "is not a mapping"),
    ({"users": {"default": {}}}, "users.default: {}", "is not a mapping like"),
])
def test_bad_windows_and_zones_are_named(data, field, says):
    with pytest.raises(ConfigError) as caught:
        parse_quotas(data, "quota file q.yml")
    assert field in str(caught.value) and says in str(caught.value), str(caught.value)


def test_windows_the_rules_do_not_render_are_refused_by_them_and_kept_by_budget_mode(tmp_path, monkeypatch):
    """Read, named, never silently dropped: the rules render every window, refuse by name what they cannot
    render (a zone no quarter-hour bucket fits), budget mode enforces every window in any zone."""
    from otel_tokens.ops.rules import render
    from otel_tokens.quota.file import load_quotas

    path = tmp_path / "q.yml"
    path.write_text(EXAMPLE)
    recorded = {rule.get("record") for group in render(load_quotas(path))["groups"] for rule in group["rules"]}
    assert {"llm_quota:user_tokens:day_ratio", "llm_quota:user_cost:month_ratio", "llm_quota:department_tokens:ratio",
            "llm_quota:department_cost:ratio", "llm_quota:department_cost:year_ratio"} <= recorded
    assert "llm_quota:user_tokens:month_ratio" not in recorded  # no token limit on the users' month
    path.write_text(EXAMPLE.replace("year: {cost: 5000}", "year: {cost: 5000}, day: {cost: 30}"))
    recorded = {rule.get("record") for group in render(load_quotas(path))["groups"] for rule in group["rules"]}
    assert "llm_quota:department_cost:day_ratio" in recorded  # the departments' day: every window is rendered
    budget = load_quotas(path, budget=True)
    assert budget.scope_windows(USER) == ["day", "month"]
    assert budget.scope_windows(DEPARTMENT) == ["day", "month", "year"]
    path.write_text("users: {default: {24h: {tokens: 5}}}\ndepartments: {default: {month: {cost: 3}}}\n")
    assert load_quotas(path).users.default.tokens == 5  # the scopes' own windows, written out
    # zones off whole hours: half- and quarter-hour buckets (the rules' calendar windows begin at their midnight)
    path.write_text("timezone: Asia/Kolkata\nusers: {default: {day: {tokens: 5}, month: {tokens: 50}}}\n"
                    "departments: {default: {tokens: 5}}\n")
    recorded = {rule.get("record") for group in render(load_quotas(path))["groups"] for rule in group["rules"]}
    assert {"llm_quota:user_tokens:30m", "llm_quota:department_tokens:30m", "llm_quota:user_tokens:month_ratio",
            "llm_quota:department_tokens:ratio"} <= recorded
    # a zone no bucket of a quarter hour or more divides (a local mean time, as tzdata has before 1900s standard
    # time) is refused for the calendar windows, named, and kept by budget mode
    import otel_tokens.quota.file as quota_file
    from otel_tokens.quota.calendar import OffsetTable

    monkeypatch.setattr(quota_file, "rules_table", lambda name, today=None: OffsetTable(name, 0, 10, 20_143, ()))
    with pytest.raises(ConfigError, match=r"timezone: 'Asia/Kolkata' has the UTC offset \+05:35, not a whole quarter "
                                          r"hour: .*the users month, departments month there are enforced by budget"):
        load_quotas(path)
    assert load_quotas(path, budget=True).timezone == "Asia/Kolkata"  # budget mode: any offset
    monkeypatch.undo()
    path.write_text("timezone: America/New_York\ndepartments: {default: {tokens: 5}}\n")
    assert load_quotas(path).timezone == "America/New_York"


def test_the_readmes_quota_file_is_what_budget_mode_reads_and_the_rules_refuse_by_name(tmp_path):
    from pathlib import Path

    from otel_tokens.quota.file import load_quotas

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## Quotas on your calendar"):]
    block = section[section.index("```yaml") + len("```yaml"):section.index("```", section.index("```yaml") + 7)]
    path = tmp_path / "q.yml"
    path.write_text(block)
    quotas = load_quotas(path, budget=True)
    assert (quotas.timezone, quotas.scope_windows(USER), quotas.scope_windows(DEPARTMENT)) == (
        "Asia/Shanghai", ["24h", "day", "month"], ["month", "year"])
    assert load_quotas(path) == quotas  # the rules render every window it sets
