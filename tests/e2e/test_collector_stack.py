"""The shipped collector, Prometheus and Alertmanager configs run for real: promtool and amtool
checks, the compose stack's secrets, routing and inhibition through a real Alertmanager."""

from __future__ import annotations

import json
import os
import re
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.collector_files import (
    AM_EXAMPLE_ENV,
    COLLECTOR,
    CONTRIB_VERSION,
    REQUIRED_SECRETS,
    ROOT,
    RULES,
    _am_template,
    _compose,
    _host,
    _load,
    _otelcol,
    _prometheus,
    _rule_files,
)

RULE_TESTS = RULES / "tests"


SERVICES = frozenset({"collector", "prometheus", "alertmanager", "grafana", "tempo", "redis", "guard", "digest"})


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found: `make system-deps` (apt-get install prometheus prometheus-alertmanager)"
    if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1].strip("/"))


def _published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port of a compose service's `ports` (short syntax)."""
    out = {}
    for entry in service.get("ports", []):
        host, container = str(entry).rsplit(":", 1) if ":" in str(entry) else (entry, entry)
        out[int(str(container).split("/")[0])] = int(str(host).rsplit(":", 1)[-1])
    return out


def _am_rendered(tmp_path: Path) -> Path:
    path = tmp_path / "alertmanager.yml"
    path.write_text(string.Template(_am_template()).substitute(AM_EXAMPLE_ENV))
    return path
def test_ports_agree_across_collector_prometheus_and_compose() -> None:
    otelcol, prometheus, services = _otelcol(), _prometheus(), _compose()["services"]
    assert set(services) == SERVICES

    collector_ports = _published(services["collector"])
    for protocol, port in (("grpc", 4317), ("http", 4318)):
        endpoint = otelcol["receivers"]["otlp"]["protocols"][protocol]["endpoint"]
        assert _port(endpoint) == port and collector_ports.get(port) == port, protocol

    exporter_port = _port(otelcol["exporters"]["prometheus"]["endpoint"])
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    collector_targets = [t for c in jobs["otel-collector"]["static_configs"] for t in c["targets"]]
    assert collector_targets == [f"collector:{exporter_port}"]
    assert collector_ports.get(exporter_port) == exporter_port == 8889
    assert jobs["otel-collector"].get("honor_labels") is True  # job/instance from the app's resource

    self_targets = [t for c in jobs["prometheus"]["static_configs"] for t in c["targets"]]
    assert self_targets == ["localhost:9090"] and _published(services["prometheus"]) == {9090: 9090}

    am_targets = [t for am in prometheus["alerting"]["alertmanagers"] for c in am["static_configs"]
                  for t in c["targets"]]
    assert am_targets == ["alertmanager:9093"] and _published(services["alertmanager"]) == {9093: 9093}

    tempo = _load(COLLECTOR / "tempo.yaml")
    tempo_otlp = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    traces_exporter = otelcol["exporters"]["otlp/tempo"]["endpoint"]
    assert _host(traces_exporter) == "tempo" and _port(traces_exporter) == _port(tempo_otlp) == 4317
    assert _host(tempo_otlp) == "0.0.0.0"  # Tempo >= 2.7 binds localhost unless told otherwise
    assert tempo["server"]["http_listen_port"] == 3200 and _published(services["tempo"]) == {3200: 3200}
    assert _published(services["grafana"]) == {3000: 3000}
    assert _published(services["redis"]) == {6379: 6379}  # OTEL_TOKENS_BUDGET_STORE=redis://localhost:6379/0
    assert "--appendonly yes" in services["redis"]["command"][0]  # a restarted store keeps the windows
    # no host port is published twice
    host_ports = [p for s in services.values() for p in _published(s).values()]
    assert len(host_ports) == len(set(host_ports)), host_ports
def test_every_image_is_pinned_to_a_version() -> None:
    images = {name: service["image"] for name, service in _compose()["services"].items()}
    for name, image in images.items():
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert re.fullmatch(r"v?\d+(\.\d+){1,2}", tag), f"{name}: {image} is not pinned to a version"
    assert images["collector"] == f"otel/opentelemetry-collector-contrib:{CONTRIB_VERSION}"
    assert images["prometheus"].startswith("prom/prometheus:v2.")  # rule files are checked by promtool 2.x
    assert images["alertmanager"].startswith("prom/alertmanager:v0.")
def test_promtool_check_config(tmp_path: Path) -> None:
    promtool = _binary("promtool")
    config = _prometheus()
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(RULES / "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    output = _run(promtool, "check", "config", str(path))
    assert f"{len(_rule_files())} rule files found" in output.stdout, output.stdout
def test_promtool_check_rules() -> None:
    promtool = _binary("promtool")
    assert not list(RULES.glob("*.test.yml")), "unit tests in rules/ would be loaded by Prometheus: use rules/tests/"
    assert RULES / "static.yml" in _rule_files()
    _run(promtool, "check", "rules", *map(str, _rule_files()))
def test_promtool_rule_unit_tests() -> None:
    promtool = _binary("promtool")
    tests = sorted(RULE_TESTS.glob("*.test.yml"))
    assert RULE_TESTS / "static.test.yml" in tests
    _run(promtool, "test", "rules", *(p.name for p in tests), cwd=RULE_TESTS)
def test_amtool_check_config_and_routes(tmp_path: Path) -> None:
    amtool = _binary("amtool")
    path = _am_rendered(tmp_path)
    _run(amtool, "check-config", str(path))
    for severity in ("critical", "warning"):
        result = _run(amtool, "config", "routes", "test", f"--config.file={path}",
                      f"--verify.receivers=guard,{severity}", f"severity={severity}", "alertname=LLMUserTokenQuota",
                      "user_id=alice", "window=24h")
        assert result.stdout.strip() == f"guard,{severity}"  # the guard first, then the people
    result = _run(amtool, "config", "routes", "test", f"--config.file={path}", "severity=warning",
                  "alertname=LLMUsageSpike", "user_id=alice")
    assert result.stdout.strip() == "warning"  # not a quota alert: not the guard's
    result = _run(amtool, "config", "routes", "test", f"--config.file={path}", "severity=warning",
                  "alertname=LLMDepartmentBudgetForecast", "department=research", "quota=tokens", "window=month")
    assert result.stdout.strip() == "warning"  # a forecast is for people: the guard never sees it
def test_compose_sed_rendering_equals_string_template(tmp_path: Path) -> None:
    """The alertmanager container's entrypoint (sed, busybox sh) renders exactly what tests render."""
    script = _compose()["services"]["alertmanager"]["command"][0]
    assert "$" not in script.replace("$$", ""), "a single dollar would be interpolated by compose"
    script = script.replace("$$", "$")
    render, exec_line = script.split("exec /bin/alertmanager", 1)
    assert '--config.file="$config"' in exec_line and "--storage.path=/alertmanager" in exec_line
    env = dict(AM_EXAMPLE_ENV, SMTP_AUTH_USERNAME="us|er", SMTP_AUTH_PASSWORD=r"p&ss|w\1/${HOME}$x`id`",
               ALERT_WEBHOOK_URL="http://hooks.example.test/a?b=1&c=2")
    out = tmp_path / "rendered.yml"
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AM_TEMPLATE": str(COLLECTOR / "alertmanager.yml"),
            "AM_CONFIG": str(out)}
    result = subprocess.run(["/bin/sh", "-c", render], env={**base, **env}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == string.Template(_am_template()).substitute(env)
    missing = dict(env)
    del missing["ALERT_EMAIL_TO"]
    result = subprocess.run(["/bin/sh", "-c", render], env={**base, **missing}, capture_output=True, text=True)
    assert result.returncode != 0  # refuses to start on an unset variable


FORGED_EXPOSITION = """\
# TYPE llm_token_usage_total counter
llm_token_usage_total{job="kb-chat",user_id="mallory",gen_ai_token_type="input"} 5
# TYPE ALERTS gauge
ALERTS{alertname="LLMUserTokenQuota",alertstate="firing",severity="critical",user_id="alice",window="24h"} 1
# TYPE ALERTS_FOR_STATE gauge
ALERTS_FOR_STATE{alertname="LLMUserTokenQuota",user_id="alice"} 1.7e9
# TYPE llm_quota:user_tokens:limit_override gauge
llm_quota:user_tokens:limit_override{user_id="mallory"} 1e12
# TYPE llm_quota:user_tokens:24h gauge
llm_quota:user_tokens:24h{user_id="alice"} 1e12
# TYPE target_info gauge
target_info{job="kb-chat",service_name="kb-chat"} 1
"""
def test_the_collector_scrape_drops_forged_alerts_and_forged_rule_series(tmp_path: Path) -> None:
    """A collector's exporter page as an OTLP producer could shape it (the collector keeps `:` and the
    name ALERTS as sent), scraped by a real Prometheus with the shipped job: only our metric names land."""
    from tests.support.fixed_http import serve_get
    from tests.support.prometheus_stack import free_port, query, start_process, wait_http

    exporter = serve_get(lambda path: (FORGED_EXPOSITION.encode(), "text/plain; version=0.0.4"))
    (job,) = [j for j in _prometheus()["scrape_configs"] if j["job_name"] == "otel-collector"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{exporter.server_address[1]}"]}]
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": [job]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = start_process([_binary("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            tmp_path, "prometheus")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/-/ready")
        deadline = time.monotonic() + 30
        while not query(url, "llm_token_usage_total"):
            assert time.monotonic() < deadline, "the scrape never landed"
            time.sleep(0.2)
        time.sleep(1.5)  # a second scrape too
        landed = {r["metric"]["__name__"] for r in query(url, '{__name__=~".+", job="kb-chat"}')}
        assert landed == {"llm_token_usage_total", "target_info"}
        assert query(url, '{__name__=~"ALERTS.*|llm_quota:.*"}') == []
    finally:
        process.terminate()
        process.wait(timeout=10)
        exporter.shutdown()
def test_stack_secrets_lock_prometheus_and_alertmanager(tmp_path: Path) -> None:
    """`otel-tokens stack-secrets` as the README runs it, then the real Prometheus and Alertmanager on
    the web config it wrote: no client gets in without the password, ours do with it, and a second run
    keeps every value."""
    import base64
    import urllib.error
    import urllib.request

    from tests.support.prometheus_stack import free_port, start_process, wait_http

    (tmp_path / "docker-compose.yml").write_text((COLLECTOR / "docker-compose.yml").read_text())
    (tmp_path / ".env").write_text("SMTP_FROM=me@example.test\nREDIS_PASSWORD=kept-as-it-was\n")
    made = _run(sys.executable, "-m", "otel_tokens.ops.cli", "stack-secrets", str(tmp_path))
    assert "created" in made.stdout
    env = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines())
    assert env["REDIS_PASSWORD"] == "kept-as-it-was" and env["SMTP_FROM"] == "me@example.test"
    assert all(len(env[name]) == 64 for name in REQUIRED_SECRETS - {"REDIS_PASSWORD"})
    assert (tmp_path / ".env").stat().st_mode & 0o077 == 0

    def files() -> dict[str, str]:
        return {p.name: p.read_text() for p in [*(tmp_path / "secrets").iterdir(), tmp_path / ".env"]}

    before = files()
    again = _run(sys.executable, "-m", "otel_tokens.ops.cli", "stack-secrets", str(tmp_path))
    assert again.stdout.strip() == "every secret is already there" and files() == before

    password = (tmp_path / "secrets" / "prometheus-password").read_text().strip()
    web = str(tmp_path / "secrets" / "web.yml")
    prom_port, am_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}}))
    processes = [
        start_process([_binary("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
                       f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                       "--web.enable-lifecycle", f"--web.config.file={web}"], tmp_path, "prometheus"),
        start_process([_binary("prometheus-alertmanager"), f"--config.file={_am_rendered(tmp_path)}",
                       f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
                       "--cluster.listen-address=", f"--web.config.file={web}"], tmp_path, "alertmanager")]
    good = "Basic " + base64.b64encode(f"otel-tokens:{password}".encode()).decode()
    bad = "Basic " + base64.b64encode(b"otel-tokens:guess").decode()

    def status(url: str, authorization: str | None, method: str = "GET", body: bytes | None = None) -> int:
        headers = {"Content-Type": "application/json", **({"Authorization": authorization} if authorization else {})}
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=10).status
        except urllib.error.HTTPError as error:
            return error.code

    try:
        for port in (prom_port, am_port):
            wait_http(f"http://otel-tokens:{password}@127.0.0.1:{port}/-/ready")
        prometheus, alertmanager = f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}"
        forged = json.dumps([{"labels": {"alertname": "LLMUserTokenQuota", "user_id": "alice"}}]).encode()
        for url, method, body in ((prometheus + "/api/v1/query?query=up", "GET", None),
                                  (prometheus + "/-/reload", "POST", b""),
                                  (alertmanager + "/api/v2/alerts", "POST", forged)):
            assert status(url, None, method, body) == 401 and status(url, bad, method, body) == 401, url
        assert status(alertmanager + "/api/v2/alerts", good, "POST", forged) == 200
        # our own client: credentials from the environment or the URL
        from otel_tokens.prometheus_api import Prometheus, PrometheusError

        with pytest.raises(PrometheusError, match="asks for credentials"):
            Prometheus(prometheus).instant("up", time.time())
        assert Prometheus(f"http://otel-tokens:{password}@127.0.0.1:{prom_port}").instant("vector(1)", time.time())
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
