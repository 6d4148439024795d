"""The shipped backend configuration in collector/, checked by every means that runs here.

No Docker engine, collector binary or Grafana exists on the test machines, so: the collector config is
checked structurally (pipelines, component names of the pinned distribution, the content-dropping
regex against the package's own attribute names), the compose file for pins and port agreement, and
everything Prometheus / Alertmanager with the real Debian binaries (promtool 2.42, amtool 0.25: the
versions docker-compose.yml pins). Metric and label names are taken from otel_tokens.names.

The Prometheus binaries are required: under CI (CI=true) a missing one fails the test, elsewhere it is
skipped (`make system-deps` installs them).
"""

from __future__ import annotations

import json
import math
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

from otel_tokens import names

ROOT = Path(__file__).resolve().parents[1]
COLLECTOR = ROOT / "collector"
RULES = COLLECTOR / "rules"
RULE_TESTS = RULES / "tests"

# The collector image docker-compose.yml must pin; COMPONENT_TYPES below is valid for this version.
CONTRIB_VERSION = "0.136.0"

# Component type names (the `type:` of each component's metadata.yaml) that the otelcol-contrib 0.136.0
# distribution contains, taken from distributions/otelcol-contrib/manifest.yaml of
# open-telemetry/opentelemetry-collector-releases at the 0.136.0 release (component modules v0.136.0).
# A subset: the components an otel-tokens deployment plausibly uses. When otelcol.yaml needs another
# one, add its type from that manifest; when the image is bumped, re-check this list against the new
# manifest and bump CONTRIB_VERSION with it.
COMPONENT_TYPES: dict[str, frozenset[str]] = {
    "receivers": frozenset({
        "otlp", "prometheus", "hostmetrics", "filelog", "jaeger", "zipkin", "kafka", "nop",
    }),
    "processors": frozenset({
        "batch", "memory_limiter", "transform", "attributes", "filter", "resource", "redaction",
        "resourcedetection", "k8sattributes", "tail_sampling", "probabilistic_sampler", "groupbyattrs",
        "cumulativetodelta", "deltatocumulative", "metricstransform",
    }),
    "exporters": frozenset({
        "otlp", "otlphttp", "debug", "nop", "prometheus", "prometheusremotewrite", "file", "kafka",
    }),
    "connectors": frozenset({"forward", "spanmetrics", "count", "routing"}),
    "extensions": frozenset({"health_check", "pprof", "zpages", "basicauth", "bearertokenauth", "file_storage"}),
}

# Keys the collector must strip (prompt / completion content), and keys it must never touch.
CONTENT_KEYS = (
    "gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions", "gen_ai.prompt",
    "gen_ai.completion", "gen_ai.prompt.0.content", "gen_ai.completion.0.content", "gen_ai.prompt.1.role",
    "gen_ai.tool.call.arguments", "gen_ai.tool.call.result", "llm.prompts", "llm.completions",
    "llm.input_messages.0.message.content", "input.value", "output.value",
)
LEGACY_ACCOUNTING_KEYS = (
    "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens", "llm.usage.total_tokens",
    "gen_ai.system", "gen_ai.request.max_tokens", "gen_ai.response.finish_reasons", "gen_ai.response.id",
)
KEEP_CONTENT_GUARD = '"${env:OTEL_TOKENS_COLLECTOR_KEEP_CONTENT:-false}" != "true"'

AM_PLACEHOLDERS = frozenset({
    "SMTP_SMARTHOST", "SMTP_FROM", "SMTP_AUTH_USERNAME", "SMTP_AUTH_PASSWORD", "SMTP_REQUIRE_TLS",
    "ALERT_EMAIL_TO", "ALERT_WEBHOOK_URL", "GUARD_URL", "GUARD_TOKEN_FILE",
})
AM_EXAMPLE_ENV = {
    "SMTP_SMARTHOST": "mail.example.test:587", "SMTP_FROM": "alertmanager@example.test",
    "SMTP_AUTH_USERNAME": "", "SMTP_AUTH_PASSWORD": "", "SMTP_REQUIRE_TLS": "false",
    "ALERT_EMAIL_TO": "oncall@example.test", "ALERT_WEBHOOK_URL": "http://127.0.0.1:9/hook",
    "GUARD_URL": "http://127.0.0.1:9095", "GUARD_TOKEN_FILE": "/etc/alertmanager/guard-token",
}

BUDGET_LIMIT_S = 90.0
SERVICES = frozenset({"collector", "prometheus", "alertmanager", "grafana", "tempo", "redis", "guard", "digest"})


# --- helpers ------------------------------------------------------------------------------------------
def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


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


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _seconds(duration: str | int | float | None) -> float:
    """A Prometheus / Go duration (`15s`, `1m30s`, `500ms`) in seconds; None is 0."""
    if duration is None:
        return 0.0
    if isinstance(duration, (int, float)):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|[smhdwy])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1].strip("/"))


def _host(endpoint: str) -> str:
    return endpoint.split("://")[-1].rsplit(":", 1)[0]


def _otelcol() -> dict[str, Any]:
    return _load(COLLECTOR / "otelcol.yaml")


def _compose() -> dict[str, Any]:
    return _load(COLLECTOR / "docker-compose.yml")


def _prometheus() -> dict[str, Any]:
    return _load(COLLECTOR / "prometheus.yml")


def _published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port of a compose service's `ports` (short syntax)."""
    out = {}
    for entry in service.get("ports", []):
        host, container = str(entry).rsplit(":", 1) if ":" in str(entry) else (entry, entry)
        out[int(str(container).split("/")[0])] = int(str(host).rsplit(":", 1)[-1])
    return out


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (relative to collector/) of a compose service's bind mounts."""
    out = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        out[target] = source
    return out


def _rule_files() -> list[Path]:
    return sorted(RULES.glob("*.yml"))


def _rules() -> list[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """(file, group, rule) for every rule of every file Prometheus loads."""
    out = []
    for path in _rule_files():
        for group in (_load(path) or {}).get("groups", []):
            for rule in group.get("rules", []):
                out.append((path, group, rule))
    return out


def _am_template() -> str:
    return (COLLECTOR / "alertmanager.yml").read_text()


def _am_rendered(tmp_path: Path) -> Path:
    path = tmp_path / "alertmanager.yml"
    path.write_text(string.Template(_am_template()).substitute(AM_EXAMPLE_ENV))
    return path


# --- (a) collector pipelines and component names --------------------------------------------------
def test_otelcol_pipelines_reference_defined_components_and_use_all_of_them() -> None:
    config = _otelcol()
    service = config["service"]
    used: dict[str, set[str]] = {kind: set() for kind in ("receivers", "processors", "exporters")}
    assert service["pipelines"], "no pipeline"
    for pipeline_id, pipeline in service["pipelines"].items():
        assert pipeline_id.split("/")[0] in {"traces", "metrics", "logs"}, pipeline_id
        for kind in used:
            for component in pipeline.get(kind, []):
                assert component in (config.get(kind) or {}), f"{pipeline_id} uses undefined {kind} {component}"
                used[kind].add(component)
        assert pipeline["receivers"] and pipeline["exporters"], pipeline_id
        processors = pipeline.get("processors", [])
        assert processors[0] == "memory_limiter", f"{pipeline_id}: memory_limiter must come first"
        assert processors[-1] == "batch", f"{pipeline_id}: batch must come last"
    for kind, ids in used.items():
        assert set(config.get(kind) or {}) == ids, f"defined but unused {kind}: {set(config[kind]) - ids}"
    assert set(config.get("extensions") or {}) == set(service.get("extensions") or []), "unused extensions"
    assert not config.get("connectors"), "connectors would need the both-sides check: none expected"


def test_otelcol_component_types_exist_in_the_pinned_contrib_version() -> None:
    config = _otelcol()
    for kind, valid in COMPONENT_TYPES.items():
        for component_id in config.get(kind) or {}:
            component_type = component_id.split("/")[0]
            assert component_type in valid, f"{kind}: {component_type!r} is not in otelcol-contrib {CONTRIB_VERSION}"


def test_otelcol_endpoints() -> None:
    config = _otelcol()
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    assert _host(config["exporters"]["prometheus"]["endpoint"]) == "0.0.0.0"
    # default translation (suffixes on, braced units dropped) gives the names in otel_tokens.names
    prom = config["exporters"]["prometheus"]
    assert not {"add_metric_suffixes", "translation_strategy", "namespace"} & set(prom), prom
    assert not prom.get("resource_to_telemetry_conversion", {}).get("enabled"), "every resource attribute as label"
    metrics = config["service"]["pipelines"]["metrics"]
    assert "prometheus" in metrics["exporters"]
    statements = [s for group in config["processors"]["transform/service_name_label"]["metric_statements"]
                  for s in group["statements"]]
    assert any('set(attributes["service.name"], resource.attributes["service.name"])' in s for s in statements)
    assert "transform/service_name_label" in metrics["processors"]


# --- content dropping ------------------------------------------------------------------------------
def _content_statements() -> list[str]:
    processor = _otelcol()["processors"]["transform/drop_genai_content"]
    return [s for key in ("trace_statements", "log_statements") for group in processor[key]
            for s in group["statements"]]


def test_content_is_dropped_from_spans_span_events_and_logs_unless_opted_in() -> None:
    config = _otelcol()
    processor = config["processors"]["transform/drop_genai_content"]
    assert {g["context"] for g in processor["trace_statements"]} == {"span", "spanevent"}
    assert {g["context"] for g in processor["log_statements"]} == {"log"}
    for statement in _content_statements():
        assert statement.split(" where ", 1)[1].startswith(KEEP_CONTENT_GUARD), statement
        # the only dollar signs are the collector's env expansion; no backslash escaping to get wrong
        assert statement.count("$") == 1 and "\\" not in statement, statement
    for pipeline_id in ("traces", "logs"):
        assert "transform/drop_genai_content" in config["service"]["pipelines"][pipeline_id]["processors"]
    environment = _compose()["services"]["collector"]["environment"]
    assert environment["OTEL_TOKENS_COLLECTOR_KEEP_CONTENT"] == "${OTEL_TOKENS_COLLECTOR_KEEP_CONTENT:-false}"


def test_content_regex_matches_content_keys_and_no_accounting_attribute() -> None:
    patterns = {m for s in _content_statements() for m in re.findall(r'delete_matching_keys\(\w+, "([^"]+)"\)', s)}
    assert len(patterns) == 1, patterns  # spans, span events and logs drop the same keys
    pattern = re.compile(patterns.pop())  # Go RE2 syntax; this pattern is also valid Python
    for key in CONTENT_KEYS:
        assert pattern.search(key), f"content key {key} is not dropped"
    ours = [v for k, v in vars(names).items() if k.isupper() and isinstance(v, str) and "." in v
            and v not in names.CONTENT_ATTRIBUTES]
    assert names.GEN_AI_USAGE_INPUT_TOKENS in ours and names.USER_ID in ours
    for key in names.CONTENT_ATTRIBUTES:  # our own opt-in content is dropped too, unless kept explicitly
        assert pattern.search(key), f"content key {key} is not dropped"
    for key in (*ours, *LEGACY_ACCOUNTING_KEYS):
        assert not pattern.search(key), f"{key} would be deleted"


# --- (b) ports agree -------------------------------------------------------------------------------
@pytest.mark.e2e
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


REQUIRED_SECRETS = {"OTEL_TOKENS_OTLP_TOKEN", "OTEL_TOKENS_GUARD_TOKEN", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}


def test_compose_variables_have_defaults_and_are_documented() -> None:
    text = (COLLECTOR / "docker-compose.yml").read_text().replace("$$", "")
    variables = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:[-?])?[^}]*\}", text)
    required = {name for name, default in variables if default == ":?"}
    assert required == REQUIRED_SECRETS, "a secret has no default: compose refuses to start without it"
    assert variables and all(default == ":-" for name, default in variables if name not in required), \
        "every other variable needs a :- default"
    from otel_tokens.ops.stack_secrets import ENV_SECRETS

    assert set(ENV_SECRETS) == REQUIRED_SECRETS  # `otel-tokens stack-secrets` makes each of them
    example = {line.split("=", 1)[0] for line in (COLLECTOR / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert {name for name, _ in variables} == example
    assert AM_PLACEHOLDERS <= set(_compose()["services"]["alertmanager"]["environment"])


def test_compose_mounts_match_the_paths_the_configs_use() -> None:
    services = _compose()["services"]
    collector = services["collector"]
    config_flag = next(a for a in collector["command"] if a.startswith("--config="))
    assert _mounts(collector)[config_flag.split("=", 1)[1]] == "./otelcol.yaml"

    prometheus = services["prometheus"]
    flags = dict(a.split("=", 1) for a in prometheus["command"] if "=" in a)
    mounts = _mounts(prometheus)
    assert mounts[flags["--config.file"]] == "./prometheus.yml"
    assert "--web.enable-lifecycle" in prometheus["command"]  # POST /-/reload after `otel-tokens rules`
    # calendar-month budgets, previous_month's 62 d subquery, and last month's statement held whole
    assert _seconds(flags["--storage.tsdb.retention.time"]) > 62 * 86400
    (rule_glob,) = _prometheus()["rule_files"]
    assert mounts[str(Path(rule_glob).parent)] == "./rules" and Path(rule_glob).name == "*.yml"

    alertmanager = services["alertmanager"]
    script = alertmanager["command"][0]
    template = re.search(r"AM_TEMPLATE:-([^}]+)\}", script)
    assert template and _mounts(alertmanager)[template.group(1)] == "./alertmanager.yml"
    assert "/alertmanager" in _mounts(alertmanager)

    grafana = _mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == "../grafana/provisioning"
    assert grafana["/var/lib/grafana/dashboards"] == "../grafana/dashboards"
    from otel_tokens.ops.stack_secrets import PASSWORD_FILE, WEB_CONFIG

    made = {PASSWORD_FILE, WEB_CONFIG}  # what `otel-tokens stack-secrets` writes to ./secrets
    for name, service in services.items():
        for target, source in _mounts(service).items():
            if source == "./secrets":
                text = yaml.safe_dump(service) + (COLLECTOR / "prometheus.yml").read_text() * (name == "prometheus")
                used = set(re.findall(re.escape(target) + r"/([A-Za-z0-9_.-]+)", text))
                assert used <= made, f"{name} reads {used - made} from ./secrets, which nothing makes"
            elif source.startswith("./"):
                assert (COLLECTOR / source).exists(), f"{name}: {source} -> {target} is missing"


# --- (c) pinned images -----------------------------------------------------------------------------
@pytest.mark.e2e
def test_every_image_is_pinned_to_a_version() -> None:
    images = {name: service["image"] for name, service in _compose()["services"].items()}
    for name, image in images.items():
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert re.fullmatch(r"v?\d+(\.\d+){1,2}", tag), f"{name}: {image} is not pinned to a version"
    assert images["collector"] == f"otel/opentelemetry-collector-contrib:{CONTRIB_VERSION}"
    assert images["prometheus"].startswith("prom/prometheus:v2.")  # rule files are checked by promtool 2.x
    assert images["alertmanager"].startswith("prom/alertmanager:v0.")


# --- (d) promtool ----------------------------------------------------------------------------------
@pytest.mark.e2e
def test_promtool_check_config(tmp_path: Path) -> None:
    promtool = _binary("promtool")
    config = _prometheus()
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(RULES / "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    output = _run(promtool, "check", "config", str(path))
    assert f"{len(_rule_files())} rule files found" in output.stdout, output.stdout


@pytest.mark.e2e
def test_promtool_check_rules() -> None:
    promtool = _binary("promtool")
    assert not list(RULES.glob("*.test.yml")), "unit tests in rules/ would be loaded by Prometheus: use rules/tests/"
    assert RULES / "static.yml" in _rule_files()
    _run(promtool, "check", "rules", *map(str, _rule_files()))


@pytest.mark.e2e
def test_promtool_rule_unit_tests() -> None:
    promtool = _binary("promtool")
    tests = sorted(RULE_TESTS.glob("*.test.yml"))
    assert RULE_TESTS / "static.test.yml" in tests
    _run(promtool, "test", "rules", *(p.name for p in tests), cwd=RULE_TESTS)


def test_static_rules_group_and_alerts() -> None:
    groups = {g["name"]: g for g in _load(RULES / "static.yml")["groups"]}
    alerts = {r["alert"]: r for r in groups["otel_tokens_static"]["rules"]}
    assert set(alerts) == {"LLMUsageSpike", "LLMTelemetryAbsent", "LLMHighErrorRatio"}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] == "warning", name
        assert {"summary", "description"} <= set(rule["annotations"]), name


# --- (e) Alertmanager ------------------------------------------------------------------------------
def test_alertmanager_template_placeholders() -> None:
    text = _am_template()
    placeholders = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    assert placeholders == AM_PLACEHOLDERS
    assert text.count("$") == len(re.findall(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", text)), "a stray dollar sign"
    config = _load(COLLECTOR / "alertmanager.yml")  # the template itself is valid YAML
    assert config["global"]["smtp_require_tls"] == "${SMTP_REQUIRE_TLS}"


@pytest.mark.e2e
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


def test_alertmanager_grouping_and_inhibition() -> None:
    config = yaml.safe_load(string.Template(_am_template()).substitute(AM_EXAMPLE_ENV))
    assert config["route"]["group_by"] == ["alertname", "user_id", "department", "window"]
    assert _seconds(config["route"]["group_wait"]) <= 10
    receivers = {r["name"]: r for r in config["receivers"]}
    # the guard: its own route, first, continue, a short repeat (a restarted guard or a forged
    # 'resolved' is corrected within a minute) while the people's routes keep the root's 4h
    guard, *others = config["route"]["routes"]
    assert guard["receiver"] == "guard" and guard["continue"] is True and _seconds(guard["repeat_interval"]) <= 60
    assert all("repeat_interval" not in r for r in others) and _seconds(config["route"]["repeat_interval"]) >= 3600
    (hook,) = receivers["guard"]["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:9095/alertmanager" and hook["send_resolved"] is True
    assert hook["http_config"]["authorization"] == {"type": "Bearer",
                                                    "credentials_file": "/etc/alertmanager/guard-token"}
    assert set(receivers["critical"]) == {"name", "email_configs", "webhook_configs"}
    assert set(receivers["warning"]) == {"name", "webhook_configs"}
    inhibit, forecast = config["inhibit_rules"]
    assert inhibit == {"source_matchers": ['severity="critical"'], "target_matchers": ['severity="warning"'],
                       "equal": ["alertname", "user_id", "department", "window"]}
    # a department's budget forecast is muted by that department's budget critical of the same kind
    assert forecast == {"source_matchers": ['alertname=~"LLMDepartment(Token|Cost)Budget"', 'severity="critical"'],
                        "target_matchers": ['alertname="LLMDepartmentBudgetForecast"'],
                        "equal": ["department", "quota"]}


@pytest.mark.e2e
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


# --- (f) metric and label names in rules -----------------------------------------------------------
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) used by a PromQL expression: label names from matchers and from
    by / without / on / ignoring / group_left / group_right; metric names are the remaining identifiers
    of our namespaces (llm*, gen_ai*)."""
    expr = _STRING.sub('""', expr)
    labels: set[str] = set()
    for block in _MATCHERS.findall(expr):
        labels |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", block))
    expr = _MATCHERS.sub(" ", expr)
    for block in _GROUPING.findall(expr):
        labels |= {label.strip() for label in block.split(",") if label.strip()}
    expr = _GROUPING.sub(" ", expr)
    metrics = {t for t in _IDENTIFIER.findall(expr) if re.match(r"(llm|gen_ai)[_:]", t)}
    return metrics, labels


def _emitted_metrics() -> set[str]:
    counters = {names.PROM_LLM_TOKEN_USAGE, names.PROM_LLM_COST, names.PROM_LLM_REQUESTS}
    histograms = {names.PROM_TOKEN_USAGE, names.PROM_OPERATION_DURATION, names.PROM_TIME_TO_FIRST_CHUNK}
    assert all(c.endswith("_total") for c in counters)
    return counters | {h + suffix for h in histograms for suffix in ("_bucket", "_sum", "_count")}


ALLOWED_LABELS = {
    *(names.prometheus_label(a) for a in (
        names.USER_ID, names.DEPARTMENT, names.GEN_AI_OPERATION_NAME, names.GEN_AI_PROVIDER_NAME,
        names.GEN_AI_REQUEST_MODEL, names.GEN_AI_TOKEN_TYPE, names.LLM_USAGE_SOURCE, names.ERROR_TYPE,
        names.CURRENCY)),
    "job", "instance", "service_name", "window", "severity", "le",
    "month",  # made by the month rollup itself (count_values), never read from a series
}


def test_promql_name_extraction() -> None:
    metrics, labels = _promql_names(
        'sum by (user_id) (increase(llm_cost_total{department!="x", gen_ai_token_type="input"}[1h] offset 1d))'
        ' / on(user_id) group_left(window) llm_quota:user_cost:limit > 0.8'
        ' and histogram_quantile(0.9, sum by (le) (rate(gen_ai_client_token_usage_bucket[5m])))')
    assert metrics == {"llm_cost_total", "llm_quota:user_cost:limit", "gen_ai_client_token_usage_bucket"}
    assert labels == {"user_id", "department", "gen_ai_token_type", "window", "le"}


def test_rules_use_only_emitted_metrics_and_known_labels() -> None:
    recorded = {rule["record"] for _, _, rule in _rules() if "record" in rule}
    assert not recorded & _emitted_metrics()
    allowed_metrics = _emitted_metrics() | recorded
    used_metrics: set[str] = set()
    for path, _, rule in _rules():
        metrics, labels = _promql_names(str(rule["expr"]))
        used_metrics |= metrics
        name = f"{path.name}: {rule.get('alert') or rule.get('record')}"
        assert metrics <= allowed_metrics, f"{name} uses {metrics - allowed_metrics}"
        unknown = {label for label in labels if label not in ALLOWED_LABELS and not label.startswith("gen_ai_")}
        assert not unknown, f"{name} uses labels {unknown}"
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, name
    assert {names.PROM_LLM_TOKEN_USAGE, names.PROM_LLM_REQUESTS} <= used_metrics


# --- (g) alert delay budget ------------------------------------------------------------------------
def test_worst_case_alert_delay_is_within_budget() -> None:
    header = (COLLECTOR / "prometheus.yml").read_text()
    documented_interval = re.findall(r"OTEL_METRIC_EXPORT_INTERVAL=(\d+)", header)
    compose_interval = re.findall(r"OTEL_METRIC_EXPORT_INTERVAL=(\d+)", (COLLECTOR / "docker-compose.yml").read_text())
    assert documented_interval and set(documented_interval) == set(compose_interval), "assumption documented twice"
    app_export = int(documented_interval[0]) / 1000

    batch_timeout = _seconds(_otelcol()["processors"]["batch"]["timeout"])
    prometheus = _prometheus()
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    scrape = _seconds(jobs["otel-collector"].get("scrape_interval", prometheus["global"]["scrape_interval"]))
    global_eval = _seconds(prometheus["global"]["evaluation_interval"])
    # the first-level rollups run slower, off the crossing path: a user's crossing is read from raw data
    # by the group that holds the alerts (otel_tokens/ops/rollups.py); a department's month counts
    # completed hours anyway; what else the slow groups record (a department's closed month) no rule reads
    rollups = [r for _, g, r in _rules() if g["name"].endswith("_rollups")]
    assert rollups and all("record" in r for r in rollups)
    second_level = {r["record"] for r in rollups if "llm_quota:" in r["expr"]}
    assert second_level == {"llm_quota:department_tokens:previous_month", "llm_quota:department_cost:previous_month"}
    assert not [r for _, _, r in _rules() if any(name in r["expr"] for name in second_level)]
    evaluation = max([global_eval, *(_seconds(g.get("interval", global_eval)) for _, g, _ in _rules()
                                     if not g["name"].endswith("_rollups"))])
    ordering = evaluation  # a recording rule in another group may be evaluated after the alert reading it
    # the budget forecast is a projection days ahead, not a crossing: its 30 m `for` is outside the budget
    largest_for = max(_seconds(r.get("for")) for _, _, r in _rules()
                      if "alert" in r and r["alert"] != "LLMDepartmentBudgetForecast")
    for_delay = math.ceil(largest_for / evaluation) * evaluation  # `for` is checked at evaluations only

    am = yaml.safe_load(string.Template(_am_template()).substitute(AM_EXAMPLE_ENV))["route"]
    routes = [am, *am.get("routes", [])]
    grouping = max(_seconds(r.get(key, am[key])) for r in routes for key in ("group_wait", "group_interval"))

    total = app_export + batch_timeout + scrape + evaluation + ordering + for_delay + grouping
    documented_total = re.search(r"worst case total: (\d+)s", header)
    assert documented_total and float(documented_total.group(1)) == total, (
        f"prometheus.yml documents {documented_total and documented_total.group(1)}s, the files add up to {total}s")
    assert total <= BUDGET_LIMIT_S


# --- (e) the scrape keeps only our names -------------------------------------------------------------
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


@pytest.mark.e2e
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


# --- (f) who may reach what ----------------------------------------------------------------------------
PUBLISH = "${OTEL_TOKENS_PUBLISH_ADDRESS:-127.0.0.1}"


def test_compose_publishes_nothing_beyond_loopback_without_auth() -> None:
    """Every port is bound to 127.0.0.1, except on OTEL_TOKENS_PUBLISH_ADDRESS the services that
    authenticate every request, each checked here for its authentication."""
    services, otelcol = _compose()["services"], _otelcol()
    opened = set()
    for name, service in services.items():
        for entry in service.get("ports", []):
            host = str(entry).rsplit(":", 2)[0]
            assert host in ("127.0.0.1", PUBLISH), f"{name} publishes {entry} beyond loopback"
            if host == PUBLISH:
                opened.add(f"{name}:{str(entry).rsplit(':', 1)[1]}")
    assert opened == {"collector:4317", "collector:4318", "guard:9095", "grafana:3000", "redis:6379"}
    # OTLP: both receivers need the bearer token, whose value compose requires
    for protocol in ("grpc", "http"):
        assert otelcol["receivers"]["otlp"]["protocols"][protocol]["auth"] == {"authenticator": "bearertokenauth"}
    assert "bearertokenauth" in otelcol["service"]["extensions"]
    assert otelcol["extensions"]["bearertokenauth"]["token"] == "${env:OTEL_TOKENS_OTLP_TOKEN}"
    assert services["collector"]["environment"]["OTEL_TOKENS_OTLP_TOKEN"].startswith("${OTEL_TOKENS_OTLP_TOKEN:?")
    # the guard refuses to listen beyond loopback without its token, which compose requires
    assert "--listen 0.0.0.0:9095" in " ".join(services["guard"]["command"])
    assert services["guard"]["environment"]["OTEL_TOKENS_GUARD_TOKEN"].startswith("${OTEL_TOKENS_GUARD_TOKEN:?")
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")  # no admin/admin
    assert "requirepass" in services["redis"]["command"][0]
    assert services["redis"]["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    # loopback-only, and basic auth all the same
    assert "--web.config.file=/etc/prometheus/secrets/web.yml" in services["prometheus"]["command"]
    assert "--web.config.file=/etc/alertmanager/secrets/web.yml" in services["alertmanager"]["command"][0]
    # their clients send the password: Prometheus itself (Alertmanager, self-scrape), Grafana, guard, digest
    prometheus = _prometheus()
    auth = {"username": "otel-tokens", "password_file": "/etc/prometheus/secrets/prometheus-password"}
    assert [am["basic_auth"] for am in prometheus["alerting"]["alertmanagers"]] == [auth]
    assert next(j for j in prometheus["scrape_configs"] if j["job_name"] == "prometheus")["basic_auth"] == auth
    datasources = {d["uid"]: d for d in _load(ROOT / "grafana/provisioning/datasources/otel-tokens.yaml")
                   ["datasources"]}
    for uid in ("prometheus", "alertmanager"):
        assert datasources[uid]["basicAuth"] is True and datasources[uid]["basicAuthUser"] == "otel-tokens"
        assert datasources[uid]["secureJsonData"]["basicAuthPassword"] == \
            "$__file{/etc/grafana/secrets/prometheus-password}"
    for name in ("guard", "digest"):
        environment = services[name]["environment"]
        assert environment["OTEL_TOKENS_PROMETHEUS_USER"] == "otel-tokens"
        assert _mounts(services[name])[str(Path(environment["OTEL_TOKENS_PROMETHEUS_PASSWORD_FILE"]).parent)] \
            == "./secrets"


@pytest.mark.e2e
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
