"""Nobody escapes by being unseen (issue 17): a call with no user is charged to `__unattributed__`
(or refused, `unattributed: reject`); refused calls create no series; a flood of new names cannot
fold an active user into `__other__`, and enforcement keys on the real id whatever the metrics fold."""

from __future__ import annotations

import contextlib
import time

import pytest
import torch

from otel_tokens import TokenUsageInstrumentor, names, usage_context
from otel_tokens.config.settings import AlertSettings, GuardRule, GuardSettings, Settings
from otel_tokens.quota.decision import QuotaExceededError, UnattributedCallError
from tests.support import tiny_models as tm
from tests.support.telemetry import instrumented
from tests.support.tiny_models import forcing

U = names.UNATTRIBUTED
REJECT_USERS = (GuardRule("user", "reject"),)


def _generate() -> None:
    tm.gpt2().generate(torch.tensor([[5]]), max_new_tokens=1, logits_processor=forcing(1, [11]))


def _requests(tel) -> dict[tuple[str, str, str | None], int]:
    return {(p.attributes.get(names.USER_ID), p.attributes.get(names.DEPARTMENT), p.attributes.get(names.ERROR_TYPE)):
            p.value for p in tel.metrics().get(names.METRIC_LLM_REQUESTS, [])}


def _decisions(tel) -> dict[tuple[str, str], int]:
    return {(p.attributes[names.GUARD_DECISION], p.attributes[names.GUARD_SCOPE]): p.value
            for p in tel.metrics().get(names.METRIC_GUARD_DECISIONS, [])}


@contextlib.contextmanager
def _over_quota(users: dict[str, str], **settings):
    """Alert mode with a fixed state: `users` name -> severity firing (no server: the state is set)."""
    guard = GuardSettings(AlertSettings("http://127.0.0.1:9/state", 3600.0), rules=REJECT_USERS)
    with instrumented(Settings(guard=guard, **settings)) as tel:
        recorder = TokenUsageInstrumentor().recorder
        alert = recorder.enforcement.alert
        # its poller's one failing poll (port 9) done before the state is set: a poll failing between the two
        # assignments below marked the guard unhealthy (fail_open) on a loaded machine
        alert.stop()
        if alert._thread is not None:
            alert._thread.join(10)
        alert.healthy = True
        alert.last_update = time.monotonic()
        recorder.enforcement.alert._over["users"] = {name: {"severity": severity, "window": "24h", "quota": "tokens"}
                                 for name, severity in users.items()}
        yield tel


def test_a_call_with_no_user_is_charged_to_its_own_principal():
    with instrumented(Settings()) as tel:
        _generate()
        with usage_context(department="sales"):
            _generate()
        with usage_context(user_id=""):  # an empty id is no id
            _generate()
    assert tel.token_totals(names.USER_ID, names.DEPARTMENT) == {(U, U): 4, (U, "sales"): 2}


def test_unattributed_reject_refuses_calls_with_no_user_and_counts_them():
    with instrumented(Settings(unattributed="reject")) as tel:
        for _ in range(3):
            with pytest.raises(UnattributedCallError, match="no user is attributed") as refused:
                _generate()
        assert isinstance(refused.value, QuotaExceededError) and refused.value.http_status == 429
        assert (refused.value.scope, refused.value.quota) == ("unattributed", "unattributed")
        with usage_context(department="sales"), pytest.raises(UnattributedCallError):
            _generate()  # a department alone says nothing of who
        with usage_context(user_id="alice"):
            _generate()
    assert tel.token_totals(names.USER_ID) == {("alice",): 2}
    # refusals with no user show as such; the one under a department never served added nothing
    assert _requests(tel) == {("alice", U, None): 1, (U, U, "UnattributedCallError"): 3}
    assert _decisions(tel) == {("reject", "unattributed"): 4}


def test_refusals_under_made_up_names_create_no_series_and_fold_no_one():
    """The attack: a blocked client goes on with 1,000 random departments (zero tokens each); the next
    real user must still be counted under their own name."""
    with _over_quota({}, cardinality_limit=10) as tel:
        with usage_context(user_id="mallory", department="sales"):
            _generate()  # served, then over quota
        TokenUsageInstrumentor().recorder.enforcement.alert._over["users"] = {"mallory": {"severity": "critical"}}
        with usage_context(user_id="mallory", department="sales"), pytest.raises(QuotaExceededError):
            _generate()
        for i in range(1000):
            with usage_context(user_id="mallory", department=f"random-{i}"), pytest.raises(QuotaExceededError):
                _generate()
        with usage_context(user_id="erin", department="research"):
            _generate()
        labels = TokenUsageInstrumentor().recorder.accounting.labels
        assert labels.distinct() == {names.USER_ID: 2, names.DEPARTMENT: 2}  # no slot spent on the refusals
    assert tel.token_totals(names.USER_ID, names.DEPARTMENT) == {("mallory", "sales"): 2, ("erin", "research"): 2}
    # refused where mallory was served before: shown under her name; the made-up departments: nowhere
    assert _requests(tel) == {("mallory", "sales", None): 1, ("mallory", "sales", "QuotaExceededError"): 1,
                              ("erin", "research", None): 1}
    assert _decisions(tel) == {("reject", "user"): 1001}


def test_a_flood_of_new_names_never_folds_an_active_user_and_enforcement_keys_on_the_real_id():
    with _over_quota({"u40": "critical", names.OTHER: "critical"}, cardinality_limit=10) as tel:
        with usage_context(user_id="alice"):
            _generate()
        for i in range(50):
            with usage_context(user_id=f"u{i}"), contextlib.suppress(QuotaExceededError):
                _generate()
        with usage_context(user_id="alice"):
            _generate()
        with usage_context(user_id="u40"), pytest.raises(QuotaExceededError):
            _generate()  # folded in metrics, refused by its own name
        with usage_context(user_id="__other__"):
            _generate()  # a real id spelled like the fold is not the fold: the `__other__` alert blocks no one
    totals = tel.token_totals(names.USER_ID)
    assert totals[("alice",)] == 4
    # the cap of 10: alice and u0..u8 keep their names; u9..u49 but the refused u40, and the escaped
    # `\__other__`, are folded (41 calls of 2 tokens)
    assert totals == {("alice",): 4, **{(f"u{i}",): 2 for i in range(9)}, (names.OTHER,): 2 * 41}


def test_the_unattributed_principal_is_enforced_like_anyone():
    """Once `__unattributed__` is over quota, dropping one's identity is no way around the block."""
    with _over_quota({U: "critical"}) as tel:
        with pytest.raises(QuotaExceededError, match="__unattributed__"):
            _generate()
        with usage_context(user_id="alice"):
            _generate()
    assert tel.token_totals(names.USER_ID) == {("alice",): 2}


def test_reserved_names_are_escaped_one_to_one_and_unattributed_is_never_folded():
    with instrumented(Settings(cardinality_limit=2)) as tel:
        for user in ("__other__", "\\__other__", "a", "b", "c", None):
            with usage_context(user_id=user):
                _generate()
    totals = tel.token_totals(names.USER_ID)
    # \__other__ and \\__other__ keep apart and take the two places; a, b, c fold; no user keeps its own
    assert totals == {("\\__other__",): 2, ("\\\\__other__",): 2, (names.OTHER,): 6, (U,): 2}
