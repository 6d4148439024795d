"""The directory file: formats, what a bad file says, precedence, reload, and how it completes a call's attribution."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from otel_tokens import names, usage_context
from otel_tokens.attribution import context as attribution
from otel_tokens.attribution.directory import Directory, install, install_directory, load_directory
from otel_tokens.config.errors import ConfigError
from otel_tokens.config.load import load_settings

ALLOWED = (names.DEPARTMENT, "team")
D = names.DEPARTMENT


@pytest.fixture(autouse=True)
def no_directory():
    yield
    install(None)


def _csv(tmp_path: Path, text: str, name: str = "directory.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_and_yaml_give_the_same_directory(tmp_path):
    csv_path = _csv(tmp_path, "\ufeffuser_id, department ,team\n alice ,research,\n# a comment\n\nbob,support,kb\n"
                              "\uff43arol,sales,\n")
    yaml_path = _csv(tmp_path, "users:\n  alice: research\n  bob: {department: support, team: kb}\n"
                               "  carol: {department: sales}\n", "directory.yaml")
    want = {"alice": {D: "research"}, "bob": {D: "support", "team": "kb"}, "carol": {D: "sales"}}
    assert load_directory(csv_path, ALLOWED) == want == load_directory(yaml_path, ALLOWED)  # ids as headers read


@pytest.mark.parametrize(("text", "where", "value", "reason"), [
    ("department\nsupport\n", "line 1", "department", "has no user column"),
    ("user_id,group\nalice,a\n", "line 1, column 2", "group", "is not an attribute the directory can set"),
    ("user_id,department\nalice,a\nalice,b\n", "line 3", "alice", "is listed twice"),
    ("user_id,department\nalice,\"a,b\"\n", "line 2, column department", "a,b", "is not one id"),
    ("user_id,department\nalice\n", "line 2", "alice", "has 1 cells, the header 2"),
    ("user_id,department\n,support\n", "line 2", ",support", "has no user id"),
    ("user_id,department\n" + "x" * 300 + ",a\n", "line 2", "x" * 300, "is not one id"),
])
def test_a_bad_file_names_file_line_and_value(tmp_path, text, where, value, reason):
    path = _csv(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_directory(path, ALLOWED)
    assert str(caught.value).startswith(f"directory {path}: {where}: {value!r} {reason}"), str(caught.value)


def test_complete_fills_only_what_is_missing_and_never_for_an_unknown_user(tmp_path):
    directory = Directory(_csv(tmp_path, "user_id,department,team\nalice,research,kb\n"), ALLOWED)
    assert directory.complete({names.USER_ID: "alice"}) == {names.USER_ID: "alice", D: "research", "team": "kb"}
    assert directory.complete({names.USER_ID: "alice", D: "sales"}) == {names.USER_ID: "alice", D: "sales",
                                                                         "team": "kb"}
    unknown = {names.USER_ID: "Alice"}  # ids are case-sensitive, as in the metrics
    assert directory.complete(unknown) is unknown
    nobody: dict[str, str] = {}
    assert directory.complete(nobody) is nobody


@pytest.mark.parametrize(("precedence", "department"), [("request", "sales"), ("directory", "research")])
def test_the_operator_chooses_who_wins_over_a_request(tmp_path, precedence, department):
    directory = Directory(_csv(tmp_path, "user_id,department\nalice,research\n"), ALLOWED, precedence)
    assert directory.for_request({names.USER_ID: "alice", D: "sales"})[D] == department
    assert directory.for_request({names.USER_ID: "alice"})[D] == "research"


def test_the_apps_usage_context_always_wins(tmp_path):
    install(Directory(_csv(tmp_path, "user_id,department\nalice,research\n"), ALLOWED, "directory"))
    with usage_context(user_id="alice"):
        assert attribution.current_attribution() == {names.USER_ID: "alice", D: "research"}
        with usage_context(department="platform"):
            assert attribution.current_attribution()[D] == "platform"


def test_an_edit_is_read_once_it_stands_still_and_a_bad_one_keeps_the_last_good(tmp_path, caplog):
    path = _csv(tmp_path, "user_id,department\nbob,support\n")
    directory = Directory(path, ALLOWED, interval=0.05)
    path.write_text("user_id,department\nbob,sales\n")
    directory.reload()  # seen, not read: it may still be being written
    assert directory.users["bob"][D] == "support"
    time.sleep(0.06)
    directory.reload()
    assert directory.users["bob"][D] == "sales"
    path.write_text("user_id,department\nbob,sales\ncarol\n")
    with caplog.at_level(logging.WARNING, logger="otel_tokens"):
        directory.reload()
        time.sleep(0.06)
        directory.reload()
    assert directory.users == {"bob": {D: "sales"}}
    assert f"directory {path}: line 3" in caplog.text and "keeping the 1 users read earlier" in caplog.text


def test_a_directory_missing_at_start_completes_nobody_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="otel_tokens"):
        directory = Directory(tmp_path / "absent.csv", ALLOWED)
    assert directory.users == {} and "cannot be read" in caplog.text


def test_the_settings_name_the_file_and_the_precedence(tmp_path):
    path = _csv(tmp_path, "user_id,department,team\nalice,research,kb\n")
    settings = load_settings({"OTEL_TOKENS_DIRECTORY": str(path), "OTEL_TOKENS_DIRECTORY_PRECEDENCE": "directory",
                              "OTEL_TOKENS_METRIC_DIMENSIONS": "user.id,department,team"})
    assert settings.directory == path and settings.directory_precedence == "directory"
    directory = install_directory(settings)
    assert directory is not None and not directory.request_first
    assert directory.users == {"alice": {D: "research", "team": "kb"}}
    bad = load_settings({"OTEL_TOKENS_DIRECTORY_PRECEDENCE": "header"})
    assert bad.directory_precedence == "request" and any("is not one of request, directory" in e for e in bad.errors)


def test_doctor_says_how_many_users_the_directory_holds_or_what_is_wrong(tmp_path):
    from otel_tokens.config.settings import Settings
    from otel_tokens.ops.doctor import report

    good = _csv(tmp_path, "user_id,department\nalice,research\nbob,support\n")
    text = report(settings=Settings(directory=good, trusted_groups=("x-forwarded-groups", {"cs": "support"})))
    assert f"who pays: directory                                {good} (2 users; request wins" in text
    assert "who pays: department from group header             x-forwarded-groups (1 groups mapped)" in text
    assert "app (service.name: the apps quota scope)           unknown_service" in text
    assert "app (service.name: the apps quota scope)           kb-chat" in report(settings=Settings(app="kb-chat"))
    bad = _csv(tmp_path, "user_id,department\nalice\n", "bad.csv")
    text = report(settings=Settings(directory=bad))
    assert "(0 users;" in text and f"  - directory {bad}: line 2: 'alice' has 1 cells, the header 2" in text


def test_a_device_or_an_oversized_file_is_refused_without_reading_it_all(tmp_path):
    from otel_tokens.config.load import MAX_FILE_BYTES

    with pytest.raises(ConfigError, match="is not a regular file"):
        load_directory(_fifo(tmp_path), ALLOWED)  # a FIFO would block a plain read forever
    big = tmp_path / "big.csv"
    big.write_bytes(b"user_id,department\n" + b"a" * (MAX_FILE_BYTES + 10))
    with pytest.raises(ConfigError, match=f"is larger than {MAX_FILE_BYTES} bytes"):
        load_directory(big, ALLOWED)


def _fifo(tmp_path: Path) -> Path:
    import os

    path = tmp_path / "pipe.csv"
    os.mkfifo(path)
    return path
