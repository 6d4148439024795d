"""`otel-tokens report --mail-to` through a real SMTP server on 127.0.0.1 (aiosmtpd), read back and
parsed: the digest as text + HTML with the chart attached; the shipped ways to send it daily (the
systemd timer and service, the compose service) run as they would be, against the report test's
real Prometheus."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.binaries import require_binary
from tests.support.report_stack import running_stack
from tests.support.smtp_sink import SmtpSink

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "collector" / "systemd"
BIN = Path(sys.executable).parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The report tests' stack (a real Prometheus with known usage)."""
    yield from running_stack(tmp_path_factory)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as server:
        yield server


def _env(sink: SmtpSink, **extra: str) -> dict[str, str]:
    return {**os.environ, "SMTP_SMARTHOST": sink.smarthost, "SMTP_FROM": "otel-tokens@example.test",
            "SMTP_REQUIRE_TLS": "false", "SMTP_AUTH_USERNAME": "", "SMTP_AUTH_PASSWORD": "",
            "MPLCONFIGDIR": str(Path(os.environ.get("TMPDIR", "/tmp")) / "otel-tokens-mpl"), **extra}


def _report(stack: dict[str, Any], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "report", "--prometheus", stack["url"],
                           "--window", f"{stack['window']}s", "--at", f"{stack['at']:.3f}", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _check_digest(mail: Any, to: list[str]) -> None:
    message = mail.message
    assert mail.sender == "otel-tokens@example.test" and mail.recipients == to
    assert message["From"] == "otel-tokens@example.test" and message["To"] == ", ".join(to)
    assert message.get_content_type() == "multipart/mixed"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert text.startswith("# LLM usage report") and "## Top users by tokens" in text
    assert "<h2>Top users by tokens" in html and "<table>" in html
    (chart,) = [part for part in message.iter_attachments() if part.get_content_type() == "image/png"]
    assert chart.get_filename() == "llm-usage.png" and chart.get_content().startswith(PNG_MAGIC)


def test_the_digest_arrives_as_text_html_and_the_chart(report_stack, sink):
    stack = report_stack
    env = _env(sink)
    out = _report(stack, env, "--mail-to", "finance@example.test,ops@example.test", "--mail-to", "cto@example.test")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""  # mailed, not printed
    assert out.stderr.strip() == ("otel-tokens report: mailed the digest to finance@example.test, ops@example.test, "
                                  f"cto@example.test via {sink.smarthost}")
    (mail,) = sink.wait()
    _check_digest(mail, ["finance@example.test", "ops@example.test", "cto@example.test"])
    # the same report as the other formats: the subject is its headline, the text its markdown
    data = json.loads(_report(stack, env, "--format", "json").stdout)
    assert mail.message["Subject"] == "LLM usage: " + data["headline"]
    markdown = _report(stack, env, "--format", "markdown").stdout
    assert mail.message.get_body(("plain",)).get_content().replace("\r\n", "\n") == markdown
    html = mail.message.get_body(("html",)).get_content()
    for user in data["users"]:
        assert f'<td class="t">{user["name"]}</td>' in html  # these names need no escaping
    # who spent, down to the app (the report app's service.name): the seeds' "mainly from scenario X"
    assert mail.message["Subject"].endswith(", mostly from app report-app (100.0 % of the cost).")
    assert "<h2>Top apps by tokens</h2>" in html and '<td class="t">report-app</td>' in html


@pytest.mark.parametrize(("env", "args", "message"), [
    ({"SMTP_SMARTHOST": ""}, ["--mail-to", "a@example.test"], "--mail-to needs SMTP_SMARTHOST"),
    ({"SMTP_SMARTHOST": "mail.example.test"}, ["--mail-to", "a@example.test"],
     "bad SMTP_SMARTHOST 'mail.example.test'"),
    ({"SMTP_FROM": ""}, ["--mail-to", "a@example.test"], "--mail-to needs SMTP_FROM"),
    ({"SMTP_REQUIRE_TLS": "yes"}, ["--mail-to", "a@example.test"], "bad SMTP_REQUIRE_TLS 'yes'"),
    ({}, ["--mail-to", "Boss <boss@example.test>"], "bad --mail-to 'Boss <boss@example.test>'"),
    ({}, ["--mail-to", "a@example.test\r\nBcc: x@evil.test"], "bad --mail-to"),
    ({}, ["--month", "2026-11", "--mail-to", "a@example.test"], "--window, --at, --png and --mail-to are for"),
])
def test_bad_mail_settings_are_one_line_usage_errors(sink, env, args, message):
    out = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "report", "--prometheus", "http://127.0.0.1:9",
                          *args], cwd=ROOT, env=_env(sink, **env), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("otel-tokens report: " + message) and out.stderr.count("\n") == 1, out.stderr
    assert sink.received == []


def test_a_relay_without_starttls_is_refused_when_tls_is_required(report_stack, sink):
    stack = report_stack
    out = _report(stack, _env(sink, SMTP_REQUIRE_TLS="true"), "--mail-to", "a@example.test")
    assert out.returncode == 3, out.stderr
    assert "does not offer STARTTLS and SMTP_REQUIRE_TLS is true" in out.stderr
    assert sink.received == []


def _unit(path: Path) -> dict[str, str]:
    """key -> value of a systemd unit (no key repeats in ours)."""
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def test_the_systemd_timer_runs_the_digest_service(report_stack, sink, tmp_path):
    stack = report_stack
    analyze = require_binary("systemd-analyze")
    service, timer = SYSTEMD / "otel-tokens-digest.service", SYSTEMD / "otel-tokens-digest.timer"
    # systemd's own checks, with ExecStart pointing at this venv's otel-tokens
    for unit in (service, timer):
        text = unit.read_text().replace("/usr/local/bin/otel-tokens", str(BIN / "otel-tokens"))
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run([analyze, "verify", str(tmp_path / service.name), str(tmp_path / timer.name)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "otel-tokens-digest" not in result.stderr, result.stderr
    when = _unit(timer)["OnCalendar"]
    result = subprocess.run([analyze, "calendar", when], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Normalized form: *-*-* 08:00:00 Asia/Shanghai" in result.stdout, result.stdout
    # every zone the timer's comment offers is one systemd knows, at the UTC time(s) the comment says
    examples = re.findall(r"#\s+OnCalendar=(\S+ \S+ \S+)(?:\s+\((.+)\))?\s*$", timer.read_text(), re.M)
    assert len(examples) == 5, examples
    for calendar, utc in examples:
        result = subprocess.run([analyze, "calendar", calendar], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "TZ": "UTC"})
        assert result.returncode == 0, (calendar, result.stderr)
        elapse = re.search(r"Next elapse: \w+ [\d-]+ (\d\d:\d\d):00 UTC", result.stdout)
        said = re.findall(r"\d\d:\d\d", utc) or [calendar.split()[1][:5]]
        assert elapse and elapse[1] in said, (calendar, said, result.stdout)  # summer or winter, as today is
    assert _unit(timer)["Unit"] == service.name and _unit(timer)["Persistent"] == "true"

    # the service as systemd runs it: the EnvironmentFile (the shipped example, pointed here), then ExecStart
    unit = _unit(service)
    assert unit["EnvironmentFile"] == "/etc/otel-tokens/digest.env" and unit["Type"] == "oneshot"
    example = dict(line.split("=", 1) for line in (SYSTEMD / "digest.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert set(example) == {"PROMETHEUS_URL", "DIGEST_MAIL_TO", "DIGEST_TIMEZONE", "SMTP_SMARTHOST", "SMTP_FROM",
                            "SMTP_AUTH_USERNAME", "SMTP_AUTH_PASSWORD", "SMTP_REQUIRE_TLS"}
    assert example["DIGEST_TIMEZONE"] == when.split()[-1]  # the digest's day is the timer's zone's
    env = {**example, "PROMETHEUS_URL": stack["url"], "DIGEST_MAIL_TO": "admins@example.test",
           "SMTP_SMARTHOST": sink.smarthost, "SMTP_FROM": "otel-tokens@example.test", "SMTP_REQUIRE_TLS": "false",
           "DIGEST_TIMEZONE": "UTC"}
    command = re.sub(r"\$\{(\w+)\}", lambda m: shlex.quote(env[m.group(1)]), unit["ExecStart"])
    argv = shlex.split(command)
    assert argv[0] == "/usr/local/bin/otel-tokens" and argv[argv.index("--window") + 1] == "yesterday"
    key, _ = unit["Environment"].split("=", 1)
    # run as the timer would the next morning: yesterday is then the (UTC) day of the stack's traffic
    out = subprocess.run([str(BIN / "otel-tokens"), *argv[1:], "--at", str(stack["at"] + 86400)],
                         env={"PATH": os.environ["PATH"], **env, key: str(tmp_path / "mpl")},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (mail,) = sink.wait()
    _check_digest(mail, ["admins@example.test"])
    day = datetime.fromtimestamp(stack["at"], timezone.utc).strftime("%Y-%m-%d")
    assert mail.message["Subject"].startswith(f"LLM usage: yesterday ({day}, UTC): ")


def test_the_compose_digest_service_mails_at_its_hour(report_stack, sink, tmp_path):
    stack = report_stack
    compose = yaml.safe_load((ROOT / "collector" / "docker-compose.yml").read_text())
    service = compose["services"]["digest"]
    assert service["image"] == compose["services"]["guard"]["image"] and "..:/src:ro" in service["volumes"]
    alertmanager = compose["services"]["alertmanager"]["environment"]
    smtp = {k: v for k, v in service["environment"].items() if k.startswith("SMTP_")}
    assert smtp == {k: v for k, v in alertmanager.items() if k.startswith("SMTP_")}  # one relay for both
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    script = service["command"][0].replace("$$", "$")  # what compose hands the shell
    # the script as the container runs it, with pip (the install), date and sleep stood in for: at
    # 05:30 UTC (13:30 in Shanghai) it sleeps until DIGEST_AT 07:15 there, mails (as the next morning: otel-tokens
    # stood in for with --at a day after the traffic), and its second sleep ends the test
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    (stand_ins / "pip").write_text("#!/bin/sh\nexit 0\n")
    (stand_ins / "date").write_text(  # 2025-12-01 05:30 UTC; the zone's offset as TZ=Asia/Shanghai date +%z
        '#!/bin/sh\nif [ "$1" = "+%z" ]; then [ "$TZ" = Asia/Shanghai ] || exit 9; echo +0800; '
        'else echo $((1764547200 + 5 * 3600 + 30 * 60)); fi\n')
    (stand_ins / "otel-tokens").write_text(f'#!/bin/sh\nexec {BIN}/otel-tokens "$@" --at {stack["at"] + 86400}\n')
    (stand_ins / "sleep").write_text(f'#!/bin/sh\necho "$1" >> {tmp_path}/slept\n'
                                     f'[ "$(wc -l < {tmp_path}/slept)" -lt 2 ] || kill -TERM $PPID\n')
    for name in ("pip", "date", "sleep", "otel-tokens"):
        (stand_ins / name).chmod(0o755)
    env = _env(sink, PATH=f"{stand_ins}:{BIN}:{os.environ['PATH']}", DIGEST_AT="07:15", DIGEST_TZ="Asia/Shanghai",
               DIGEST_MAIL_TO="admins@example.test", DIGEST_PROMETHEUS=stack["url"])
    assert service["environment"]["DIGEST_TZ"] == "${DIGEST_TZ:-Asia/Shanghai}"
    subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    slept = (tmp_path / "slept").read_text().split()
    assert slept[0] == str(17 * 3600 + 45 * 60)  # 13:30 -> 07:15 the next morning in Shanghai
    (mail,) = sink.wait()
    _check_digest(mail, ["admins@example.test"])
    bad = subprocess.run(["/bin/sh", "-c", script], env={**env, "DIGEST_AT": "7am"}, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "DIGEST_AT '7am': use HH:MM (local time in DIGEST_TZ)" in bad.stderr
