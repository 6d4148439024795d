"""The department from a proxy's group-list header (X-Forwarded-Groups: a,b): the one department its groups
mean, never a guess between two."""

from __future__ import annotations

import pytest

from otel_tokens import names
from otel_tokens.config.fields import trusted_groups
from otel_tokens.config.load import load_settings
from otel_tokens.web.headers import TrustedHeaders

GROUPS = ("X-Forwarded-Groups", {"cs-team": "support", "ai-lab": "research", "ai-lab-2": "research"})
U, D = names.USER_ID, names.DEPARTMENT


def _asgi(trusted: TrustedHeaders, *headers: tuple[str, str]) -> dict[str, str]:
    return trusted.from_asgi([(k.lower().encode(), v.encode()) for k, v in headers])


def _wsgi(trusted: TrustedHeaders, *headers: tuple[str, str]) -> dict[str, str]:
    return trusted.from_environ({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers})


@pytest.mark.parametrize("read", [_asgi, _wsgi])
@pytest.mark.parametrize(("groups", "department"), [
    ("staff, cs-team", "support"),  # the mapped group among others
    ("ai-lab,ai-lab-2", "research"),  # two groups, one department
    ("cs-team,ai-lab", None),  # two departments: ambiguous, none taken
    ("staff", None),  # nothing mapped
    ("CS-TEAM", None),  # group names are matched exactly
])
def test_the_one_department_the_groups_mean(read, groups, department):
    trusted = TrustedHeaders({U: "X-Forwarded-User"}, (), GROUPS)
    got = read(trusted, ("X-Forwarded-User", "alice"), ("X-Forwarded-Groups", groups))
    assert got == {U: "alice", **({D: department} if department else {})}


def test_a_group_header_sent_twice_counts_as_absent_and_a_department_header_wins():
    trusted = TrustedHeaders({U: "X-Forwarded-User"}, (), GROUPS)
    assert _asgi(trusted, ("X-Forwarded-User", "a"), ("X-Forwarded-Groups", "cs-team"),
                 ("X-Forwarded-Groups", "ai-lab")) == {U: "a"}
    mapped = TrustedHeaders({U: "X-Forwarded-User", D: "X-Department"}, (), GROUPS)
    assert mapped.groups is None
    assert _asgi(mapped, ("X-Forwarded-User", "a"), ("X-Department", "sales"),
                 ("X-Forwarded-Groups", "cs-team")) == {U: "a", D: "sales"}


def test_the_setting_reads_from_the_config_and_the_environment():
    want = ("x-forwarded-groups", {"cs-team": "support", "ai-lab": "research"})
    assert trusted_groups({"header": "X-Forwarded-Groups", "departments": {"cs-team": "support",
                                                                           "ai-lab": "research"}}) == want
    settings = load_settings({"OTEL_TOKENS_TRUSTED_GROUPS": "X-Forwarded-Groups:cs-team=support,ai-lab=research"})
    assert settings.trusted_groups == want
    for bad, message in (("Cookie:a=b", "carries credentials"), ("X-G:a", "is not Header:group=department"),
                         ("X-G:a=b,c", "is not Header:group=department")):
        errors = load_settings({"OTEL_TOKENS_TRUSTED_GROUPS": bad}).errors
        assert any(message in e for e in errors), (bad, errors)
