"""Budget mode in an app: the openai SDK over real HTTP, a real redis-server, the recorder's
lifecycle reserving before each call and settling after it."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

import pytest

from otel_tokens import QuotaExceededError, logs, names, usage_context
from otel_tokens.config import load_settings
from otel_tokens.config.settings import GuardRule
from otel_tokens.quota.budget.mode import UNATTRIBUTED
from otel_tokens.quota.budget.store import principal_keys
from otel_tokens.quota.calendar import load_zone, tzdata_version
from otel_tokens.quota.decision import QuotaStateUnavailableError
from otel_tokens.quota.vocabulary import DEPARTMENT
from tests.support.budget import REJECT_ALL, budget_app, packed_windows, write_quotas
from tests.support.telemetry import LogRecords


@pytest.fixture
def quotas(tmp_path):
    return write_quotas(tmp_path / "quotas.yml", {"default": {"tokens": 400}, "overrides": {"bob": {"tokens": 100000}}})


@pytest.fixture
def app(quotas, redis_url):
    yield from budget_app(quotas, redis_url, REJECT_ALL)


def run_until_refused(app, user: str, limit: int = 100, **kwargs) -> tuple[int, QuotaExceededError]:
    for served in range(limit):
        try:
            app.ask(user, **kwargs)
        except QuotaExceededError as refusal:
            return served, refusal
    raise AssertionError(f"{user} was never refused")


def test_refused_at_the_call_that_would_cross_100_percent_and_others_go_on(app):
    served, refusal = run_until_refused(app, "alice")
    assert len(app.server.requests) == served  # the refused call never left the process
    tokens, _, in_flight = app.held("alice")
    assert in_flight == 0
    assert tokens == app.metric_tokens("alice") <= 400  # the store and the exported metrics agree
    assert served >= 1 and tokens + 116 > 400  # refused only when the worst case (bound 86 + 30) did not fit
    assert (refusal.scope, refusal.principal, refusal.window, refusal.kind, refusal.http_status) == (
        "user", "alice", "24h", "tokens", 429)
    assert str(refusal) == (f"user 'alice' would go over the 24h tokens quota: {tokens:,} used, "
                            f"{refusal.reserved} reserved for this call, limit 400")
    app.ask("bob")  # other principals are not affected
    assert app.decisions() == {("reject", "user"): 1}
    assert app.decisions(window=True) == {("reject", "user", "24h"): 1}
    refused_span = app.tel.spans()[-2]
    assert refused_span.attributes[names.ERROR_TYPE] == "QuotaExceededError"
    assert refused_span.attributes[names.LLM_QUOTA_ACTION] == "reject"
    assert app.department("sales")[0] == app.metric_tokens("alice") + app.metric_tokens("bob")


def test_the_department_budget_refuses_every_user_of_the_department(tmp_path, redis_url):
    quota_file = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 100000}},
                              {"default": {"tokens": 300}, "overrides": {"support": {"tokens": 100000}}})
    for app in budget_app(quota_file, redis_url, REJECT_ALL):
        with pytest.raises(QuotaExceededError) as caught:
            for i in range(50):
                app.ask(f"user-{i % 3}", department="sales")
        assert (caught.value.scope, caught.value.principal, caught.value.window) == ("department", "sales", "month")
        assert app.department("sales")[0] <= 300
        app.ask("user-0", department="support")
        assert app.decisions() == {("reject", "department"): 1}
        assert app.decisions(window=True) == {("reject", "department", "month"): 1}


def test_the_directorys_department_is_the_one_budget_mode_charges_and_refuses(tmp_path, redis_url):
    """The app names only the user; the operator's directory puts alice and bob in sales, carol in support:
    sales' budget refuses alice and bob, carol goes on, and the store holds each department's calls."""
    directory = tmp_path / "people.csv"
    directory.write_text("user_id,department\nalice,sales\nbob,sales\ncarol,support\n")
    quota_file = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 100000}},
                              {"default": {"tokens": 300}, "overrides": {"support": {"tokens": 100000}}})
    for app in budget_app(quota_file, redis_url, REJECT_ALL, directory=directory):
        with pytest.raises(QuotaExceededError) as caught:
            for i in range(50):
                app.ask(("alice", "bob")[i % 2], department=None)
        assert (caught.value.scope, caught.value.principal) == ("department", "sales")
        with pytest.raises(QuotaExceededError):
            app.ask("bob", department=None)
        app.ask("carol", department=None)
        assert app.department("sales")[0] == app.metric_tokens("alice") + app.metric_tokens("bob") <= 300
        assert app.department("support")[0] == app.metric_tokens("carol") > 0
        departments = {p.attributes["department"] for p in app.tel.metrics()[names.METRIC_LLM_TOKEN_USAGE]}
        assert departments == {"sales", "support"}
        assert app.decisions() == {("reject", "department"): 2}


def test_the_department_month_is_counted_in_the_quota_files_zone(tmp_path, redis_url):
    import redis

    quota_file = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 100000}}, {"default": {"tokens": 300}},
                              timezone="Asia/Shanghai")
    for app in budget_app(quota_file, redis_url):
        app.ask("user-0", department="sales")
        local = datetime.now(load_zone("Asia/Shanghai"))  # the month index of the store's buckets
        state = packed_windows(redis.Redis.from_url(redis_url).hget(principal_keys(DEPARTMENT, "sales")[0], "S"))
        assert state[""][0] == local.year * 12 + local.month - 1
        store = app.recorder.enforcement.budget.store
        assert store._kind(DEPARTMENT, "", store._shift()) == "m28800"


def test_cost_quota_and_downgrade_reserved_at_the_cheaper_price(tmp_path, redis_url):
    quota_file = write_quotas(tmp_path / "q.yml", {"default": {"cost": 0.01}}, warning_ratio=0.5)
    rules = (GuardRule("user", "downgrade", "warning", (("gpt-4o", "gpt-4o-mini"),)),
             GuardRule("user", "reject", "critical"))
    for app in budget_app(quota_file, redis_url, rules):
        models = []
        for _ in range(30):
            try:
                app.ask("carol", max_tokens=200)
            except QuotaExceededError as refusal:
                assert refusal.kind == "cost" and refusal.severity == "critical"
                break
            models.append(app.server.requests[-1].body["model"])
        assert models[0] == "gpt-4o" and "gpt-4o-mini" in models  # downgraded once past 50 %
        assert models == sorted(models, key=lambda m: m == "gpt-4o-mini")  # and stays downgraded
        _, cost, _ = app.held("carol")
        assert cost == pytest.approx(app.metric_cost("carol"), abs=1e-9) and cost <= 0.01
        downgraded = [s for s in app.tel.spans() if s.attributes.get(names.LLM_QUOTA_ACTION) == "downgrade"]
        assert downgraded and downgraded[0].attributes[names.LLM_QUOTA_ORIGINAL_MODEL] == "gpt-4o"
        assert app.decisions()[("downgrade", "user")] == len(downgraded)


def test_a_warning_level_reject_refuses_at_the_warning_ratio(tmp_path, redis_url):
    quota_file = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 1000}}, warning_ratio=0.5)
    for app in budget_app(quota_file, redis_url, (GuardRule("user", "reject", "warning"),)):
        _, refusal = run_until_refused(app, "dave")
        assert refusal.severity == "warning" and app.held("dave")[0] <= 500


def test_a_scope_without_rules_is_counted_never_refused(tmp_path, redis_url):
    quota_file = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 100000}}, {"default": {"tokens": 50}})
    for app in budget_app(quota_file, redis_url, (GuardRule("user", "reject", "critical"),)):
        for _ in range(5):
            app.ask("erin")
        assert app.department("sales")[0] == app.metric_tokens("erin") > 50


def test_a_stream_holds_its_reservation_until_it_is_consumed(app):
    stream = app.ask("frank", stream=True, stream_options={"include_usage": True})
    assert app.held("frank") == (86 + 30, pytest.approx(86 * 2.5e-6 + 30 * 10e-6), 1)  # the worst case
    for _ in stream:
        pass
    tokens, _, in_flight = app.held("frank")
    assert in_flight == 0 and tokens == app.metric_tokens("frank") < 86 + 30


def test_no_output_limit_reserves_the_configured_default(tmp_path, redis_url, quotas):
    for app in budget_app(quotas, redis_url, REJECT_ALL, default_max_output_tokens=350):
        app.ask("gina")  # 86 + 30 fit in 400
        with pytest.raises(QuotaExceededError) as caught:
            app.ask("gina", max_tokens=None)  # 86 + 350 do not, whatever was used
        assert caught.value.reserved == f"{86 + 350:,}"
        app.ask("gina")  # with a limit set it fits again


def test_calls_with_no_user_share_the_unattributed_principal(app):
    app.ask(None, department=None)
    assert app.held(UNATTRIBUTED)[0] == app.department(UNATTRIBUTED)[0] > 0


def test_the_quota_file_is_reloaded_and_a_bad_edit_keeps_the_last_good_one(app, quotas):
    run_until_refused(app, "hana")
    write_quotas(quotas, {"default": {"tokens": 100000}})
    deadline = time.monotonic() + 10
    while app.recorder.enforcement.budget.quotas.users.default.tokens != 100000 and time.monotonic() < deadline:
        time.sleep(0.02)
    app.ask("hana")  # the raised limit applies without a restart
    logs = LogRecords()
    logging.getLogger("otel_tokens").addHandler(logs)
    try:
        quotas.write_text("users:\n  default: {tokens: -5}\n")
        deadline = time.monotonic() + 10
        while not logs.records and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        logging.getLogger("otel_tokens").removeHandler(logs)
    message = logs.records[0].getMessage()
    assert str(quotas) in message and "users.default.tokens" in message and "-5" in message
    assert "keeping the quotas read earlier" in message
    app.ask("hana")  # still the last good limits


def test_budget_mode_from_the_two_variables_and_bad_values_named():
    env = {"OTEL_TOKENS_QUOTA_FILE": "/etc/otel-tokens/quotas.yml", "OTEL_TOKENS_BUDGET_STORE": "redis://r:6379/2"}
    guard = load_settings(env).guard
    assert guard.budget.enabled and not guard.alert.enabled
    assert str(guard.budget.quota_file) == "/etc/otel-tokens/quotas.yml"
    bad = load_settings({**env, "OTEL_TOKENS_BUDGET_STORE": "http://r:6379"})
    assert not bad.guard.budget.enabled
    assert "OTEL_TOKENS_BUDGET_STORE: 'http://r:6379' is not a redis://" in bad.errors[0]


# --- faults: down, slow, full, restarted --------------------------------------------------------------------------
def test_store_down_fails_open_counted_logged_once_and_recovers_by_itself(app, redis_server, caplog, monkeypatch):
    # "once" is per process: another test of this process may have logged the same store's outage already
    monkeypatch.setattr(logs, "_reported", set())
    app.ask("ivan")
    first = app.metric_tokens("ivan")
    app.held("ivan")
    redis_server.stop()
    with caplog.at_level(logging.WARNING, "otel_tokens"):
        for _ in range(3):
            app.ask("ivan")  # let through
    assert app.decisions() == {("fail_open", "none"): 3}
    assert app.decisions(window=True) == {("fail_open", "none", "none"): 3}
    down = [r for r in caplog.records if "budget store" in r.getMessage()]
    assert len(down) == 1 and "lets calls through (fail open)" in down[0].getMessage()
    assert "127.0.0.1" in down[0].getMessage()
    redis_server.start()  # restarted empty (no persistence here): the worker loads the scripts again
    store = app.recorder.enforcement.budget.store
    deadline = time.monotonic() + 10  # the backoff (1 s), then the worker's next tick; longer on a loaded machine
    while (store._down_until or store._stale) and time.monotonic() < deadline:
        time.sleep(0.05)
    app.ask("ivan")
    assert app.decisions() == {("fail_open", "none"): 3}  # enforcing again
    # what was let through is counted once the store is back; only what the restart wiped is gone
    tokens, _, in_flight = app.held("ivan")
    assert (tokens, in_flight) == (app.metric_tokens("ivan") - first, 0)
def test_store_down_fails_closed_when_configured(quotas, redis_url, redis_server):
    for app in budget_app(quotas, redis_url, fail_closed=True):
        redis_server.stop()
        with pytest.raises(QuotaStateUnavailableError) as caught:
            app.ask("judy")
        assert "fails closed" in str(caught.value) and len(app.server.requests) == 0
        assert app.decisions() == {("fail_closed", "none"): 1}


def test_a_slow_store_never_holds_a_call_beyond_its_timeout(app, redis_server):
    app.ask("kim")
    sleeper = threading.Thread(target=lambda: redis_server.client().execute_command("DEBUG", "SLEEP", "3"))
    sleeper.start()
    time.sleep(0.2)
    app.ask("kim")  # the reservation times out (50 ms): let through
    assert sleeper.is_alive()  # returned while the store was still asleep
    sleeper.join()
    assert app.decisions() == {("fail_open", "none"): 1}


def test_a_full_store_fails_open_and_recovers(app, redis_server):
    app.ask("lee")
    app.held("lee")  # settled (a settlement frees memory: a full Redis lets it through, and what it carries)
    client = redis_server.client()
    client.config_set("maxmemory", "1")  # noeviction: every write is refused with OOM
    try:
        app.ask("lee")
        assert app.decisions() == {("fail_open", "none"): 1}
    finally:
        client.config_set("maxmemory", "0")
    time.sleep(1.1)
    app.ask("lee")
    assert app.decisions() == {("fail_open", "none"): 1}
    tokens, _, in_flight = app.held("lee")
    assert (tokens, in_flight) == (app.metric_tokens("lee"), 0)  # nothing lost: the let-through call is counted


def test_doctor_shows_budget_mode_and_never_the_store_password(quotas, redis_url):
    from otel_tokens.ops.doctor import report

    env = {"OTEL_TOKENS_QUOTA_FILE": str(quotas), "OTEL_TOKENS_BUDGET_STORE": redis_url}
    text = report(settings=load_settings(env))
    assert "on, no rules (fit at 100 %: shortened to what remains, else refused)" in text
    assert f"{redis_url} (answers)" in text
    assert f"{quotas} (warning ratio 0.8; calendar in UTC)" in text
    zoned = write_quotas(quotas.parent / "zoned.yml", {"default": {"tokens": 100}}, timezone="Asia/Shanghai")
    text = report(settings=load_settings({**env, "OTEL_TOKENS_QUOTA_FILE": str(zoned)}))
    assert f"{zoned} (warning ratio 0.8; calendar in Asia/Shanghai, tzdata {tzdata_version()})" in text
    assert "windows with a limit                               users 24h\n" in text
    windowed = write_quotas(quotas.parent / "windowed.yml", {"default": {"day": {"tokens": 100}}},
                            {"default": {"month": {"cost": 5}, "year": {"cost": 50}}})
    text = report(settings=load_settings({**env, "OTEL_TOKENS_QUOTA_FILE": str(windowed)}))
    assert "windows with a limit                               users day; departments month, year\n" in text
    down = report(settings=load_settings({"OTEL_TOKENS_QUOTA_FILE": str(quotas),
                                          "OTEL_TOKENS_BUDGET_STORE": "redis://app:s3cr3t@127.0.0.1:1/0"}))
    assert "s3cr3t" not in down and "redis://app:***@127.0.0.1:1/0 (DOES NOT ANSWER)" in down
    assert "does not answer; calls go through unchecked (fail open)" in down


def test_the_package_imports_and_instruments_without_redis_installed():
    """redis-py is an extra: imported only when budget mode connects."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['redis'] = None\n"
            "from otel_tokens import TokenUsageInstrumentor\n"
            "TokenUsageInstrumentor().instrument()\n"
            "print('redis' in sys.modules and sys.modules['redis'] is not None)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr


# --- what the reviewer broke (issue 16 review) ----------------------------------------------------------------
def test_sdk_message_objects_are_bounded_by_their_content(app):
    """The OpenAI docs append `response.choices[0].message` (a pydantic object) to `messages`."""
    from openai.types.chat import ChatCompletionMessage

    from otel_tokens.quota.budget import bounds

    long = "word " * 2000
    as_object = ChatCompletionMessage(role="assistant", content=long)
    assert bounds.message_bound(as_object) == bounds.message_bound({"role": "assistant", "content": long})
    with pytest.raises(QuotaExceededError):  # 10,000 bytes of history do not fit in 400 tokens
        with usage_context(user_id="olga"):
            app.client.chat.completions.create(model="gpt-4o", messages=[as_object], max_tokens=5)
    assert len(app.server.requests) == 0


def test_a_generator_of_messages_still_reaches_the_server(app):
    def history():
        yield {"role": "system", "content": "be brief"}
        yield {"role": "user", "content": "hi"}

    with usage_context(user_id="pat"):
        app.client.chat.completions.create(model="gpt-4o", messages=history(), max_tokens=5)
    assert [m["content"] for m in app.server.requests[-1].body["messages"]] == ["be brief", "hi"]


def test_a_negative_output_limit_reserves_nothing_rather_than_a_credit(app):
    from otel_tokens.recording.call import UsageEstimate

    budget = app.recorder.enforcement.budget
    decision, held = budget.reserve("transformers", "m", {"user.id": "quinn"}, UsageEstimate(10, -999_999, -3))
    assert decision is None and app.held("quinn") == (10, 0.0, 1)
    budget.settle(held, 10, None)
    assert app.held("quinn") == (10, 0.0, 0)


def test_an_unpriced_request_model_under_a_cost_limit_is_reserved_at_the_dearest_price(tmp_path, redis_url):
    """An Azure deployment name has no price, the reply names a priced model: the reservation must
    not be free, or the cost quota would never refuse."""
    quota_file = write_quotas(tmp_path / "q.yml", {"default": {"cost": 0.001}})
    for app in budget_app(quota_file, redis_url):
        app.server.response_model = "gpt-4o"
        with pytest.raises(QuotaExceededError) as caught:
            for _ in range(50):
                app.ask("rita", model="my-deployment", max_tokens=20)
        assert caught.value.kind == "cost"
        _, cost, _ = app.held("rita")
        assert cost == pytest.approx(app.metric_cost("rita"), abs=1e-9) and cost <= 0.001


def test_bad_quota_values_and_reload_intervals_are_refused_with_their_field(tmp_path):
    from otel_tokens.config.errors import ConfigError
    from otel_tokens.quota.file import load_quotas

    for value in (".inf", ".nan", "1e30"):
        (tmp_path / "q.yml").write_text(f"users: {{default: {{tokens: {value}}}}}\n")
        with pytest.raises(ConfigError, match=r"users\.default\.tokens"):
            load_quotas(tmp_path / "q.yml")
    (tmp_path / "q.yml").write_bytes(b"users: {default: {tokens: 5}}\n# \xff\xfe\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_quotas(tmp_path / "q.yml")
    (tmp_path / "c.yml").write_text("guard: {quota_file: q.yml, store: 'redis://r/0', quota_reload_interval: 0}\n")
    settings = load_settings({"OTEL_TOKENS_CONFIG": str(tmp_path / "c.yml")})
    assert "quota_reload_interval 0 that is under 0.05 seconds" in settings.errors[0]


def test_a_forked_child_never_inherits_a_held_lock_or_the_parents_queue(app):
    budget = app.recorder.enforcement.budget
    budget._flushing.acquire()  # the parent's worker was mid-send when the fork happened
    budget._unsettled = 5
    budget._after_fork()
    assert budget._unsettled == 0 and budget._flushing.acquire(timeout=0.1)
    budget._flushing.release()
    app.ask("sam")  # the child enforces
    assert app.held("sam")[0] == app.metric_tokens("sam") > 0


# --- what the server will really do (issue: ways around the hard quota) -------------------------------------------
HARD = 10_000  # tokens a day for alice
GENERATES_WITHOUT_LIMIT = 3_000  # what the server below generates when told no limit (0, negative, none)


def _generated(server) -> int:
    """Tokens the server generated and billed, from its own replies' requests (prompt + completion)."""
    return sum(server.prompt_tokens(r.body["model"], r.body["messages"]) + server.asked(r.body, r.path)
               * int(r.body.get("n") or 1) for r in server.requests)


@pytest.mark.parametrize("how", [
    {"max_tokens": 0},  # servers that read 0 as "no limit"
    {"max_tokens": -5},
    {"max_tokens": 10, "extra_body": {"max_tokens": 1500}},  # the SDK sends the extra body's value
    {"max_tokens": 10, "extra_query": {"max_tokens": "1500"}},
    {"max_tokens": 100, "extra_body": {"n": 8}},
    {"max_tokens": 100, "n": 8},
], ids=["max_tokens=0", "negative", "extra_body", "extra_query", "extra_body_n", "n"])
def test_a_request_never_takes_a_user_past_the_hard_limit_by_what_it_really_asks(tmp_path, redis_url, how):
    quota_file = write_quotas(tmp_path / "q.yml", {"default": {"tokens": HARD}})
    for app in budget_app(quota_file, redis_url, server={"generate_as_asked": GENERATES_WITHOUT_LIMIT}):
        served, _ = run_until_refused(app, "alice", **how)
        tokens, _, in_flight = app.held("alice")
        assert served >= 1 and in_flight == 0
        assert tokens == _generated(app.server) <= HARD  # the store holds what the server did, never past the limit
        assert app.metric_tokens("alice") == tokens


def test_a_stream_left_after_two_chunks_is_settled_at_what_the_server_can_have_generated(tmp_path, redis_url):
    """Read two chunks, close: the server generated its whole reply (here the 2,000 tokens it was asked
    for) while the client saw a few. The store settles at the reservation; the metrics keep what was
    counted, marked estimated."""
    quota_file = write_quotas(tmp_path / "q.yml", {"default": {"tokens": HARD}})
    for app in budget_app(quota_file, redis_url, server={"generate_as_asked": GENERATES_WITHOUT_LIMIT}):
        def stalled(app=app) -> None:
            stream = app.ask("alice", max_tokens=2000, stream=True)
            next(stream)
            next(stream)
            stream.close()

        served = 0
        with pytest.raises(QuotaExceededError):
            for served in range(20):  # noqa: B007 - how many got through is the point
                stalled()
        tokens, _, in_flight = app.held("alice")
        assert in_flight == 0 and served >= 1
        assert _generated(app.server) <= tokens <= HARD  # the conservative book: never below what was generated
        assert app.metric_tokens("alice") < tokens  # the observed book: what the client read
        spans = [s for s in app.tel.spans() if s.attributes.get(names.GEN_AI_USAGE_OUTPUT_TOKENS) is not None]
        assert spans and all(s.attributes[names.LLM_USAGE_SOURCE] == "estimated" for s in spans)


def test_a_reload_that_drops_an_override_or_raises_a_limit_tenfold_is_named(app, quotas):
    """A quota file left truncated but valid dropped mallory's 500 to the default with an INFO line."""
    logs = LogRecords()
    logging.getLogger("otel_tokens").addHandler(logs)
    try:
        write_quotas(quotas, {"default": {"tokens": 400_000}})  # bob's override gone, the default x1000
        deadline = time.monotonic() + 10
        while not [r for r in logs.records if r.levelno == logging.WARNING] and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        logging.getLogger("otel_tokens").removeHandler(logs)
    (warning,) = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    assert str(quotas) in warning and "users override 'bob' dropped (now the default)" in warning
    assert "users default tokens limit 400 -> 400000" in warning and warning.endswith("intended?")
    # applied all the same: it may be meant
    assert app.recorder.enforcement.budget.quotas.users.default.tokens == 400_000


def test_an_override_of_one_kind_keeps_the_default_limit_of_the_other(tmp_path, redis_url):
    """As the rules do (limit_override or the default, per kind): an override of tokens only leaves the
    principal under the default cost limit, not under no cost limit."""
    quota_file = write_quotas(tmp_path / "q.yml", {"default": {"tokens": 100, "cost": 0.001},
                                                   "overrides": {"erin": {"tokens": 1_000_000}}})
    for app in budget_app(quota_file, redis_url):
        _, refusal = run_until_refused(app, "erin", max_tokens=200)
        assert (refusal.principal, refusal.kind) == ("erin", "cost")
        assert app.held("erin")[1] <= 0.001
