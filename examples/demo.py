"""`make demo`: the whole product on one machine, no Docker.

Starts, on free local ports: Redis (budget mode's store), Alertmanager (the shipped routing, a
webhook here that prints what it receives), Prometheus (the rendered quota rules and the shipped
static rules), a local OpenAI-compatible model server, a second one standing for a paid API, and two apps
under `opentelemetry-instrument` exporting metrics for Prometheus to scrape: the knowledge-base app (several
users; hard quotas, budget mode) and a nightly job on the paid API (soft quotas, alert mode), each with a runaway
user. Shows per-user usage live, the alerts as Alertmanager delivers them, the budget guard shortening the
runaway batch job's last call to what its quota has left and then refusing it, the alert guard sending the
nightly job to the local model server past its warning and refusing it after its critical alert, how far past
its quota each got, then the report and the PNG. Every process it started is stopped at the end, also on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import string
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / ".demo" / "run"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "examples"))

from tiny_local_model import ensure  # noqa: E402

from otel_tokens.ops.rules import render_text, series  # noqa: E402
from otel_tokens.quota.budget.store import RedisBudgetStore  # noqa: E402
from otel_tokens.quota.file import parse_quotas  # noqa: E402
from otel_tokens.quota.vocabulary import USER  # noqa: E402

QUOTAS = {
    "timezone": "Asia/Shanghai",  # the day and the month begin at 00:00 local time (budget mode, rules, report)
    "warning_ratio": 0.8,
    # users: a rolling 24 h, a day (today's total, 当日累计用量) and a month of cost; the runaways' 24 h is small
    "users": {"default": {"24h": {"tokens": 50_000}, "day": {"tokens": 40_000}, "month": {"cost": 5}},
              "overrides": {"batch-bot": {"tokens": 1500}, "eve": {"tokens": 1500}}},
    "departments": {"default": {"tokens": 1_000_000, "cost": 100}},
    "apps": {"default": {"cost": 50}},  # each app (its service.name: kb-chat, nightly-job): a monthly cost budget
}
CONFIG = {  # OTEL_TOKENS_CONFIG of both processes: prices, so the demo shows money too
    "currency": "USD",
    "exchange_rates": {"CNY": 0.14},
    "prices": [{"match": "tiny-chat-model", "currency": "CNY", "input": 140, "output": 420,
                "source": "demo: an internal GPU price"},
               {"match": "gpt-4o", "currency": "USD", "input": 250, "output": 1000,
                "source": "demo: a paid API at 100x its list price, so the demo's few tokens show"},
               {"match": "*", "provider": "transformers", "currency": "USD", "input": 20, "output": 60,
                "source": "demo: virtual price of local GPU time"}],
}
USERS = ["alice", "bob", "carol", "dave", "batch-bot", "eve"]
RUNAWAYS = {"batch-bot": "kb-chat (budget mode)", "eve": "nightly-job (alert mode)"}
APPS = "job=~'kb-chat|nightly-job'"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_binaries() -> dict[str, str]:
    names = {"prometheus": "prometheus", "alertmanager": "prometheus-alertmanager", "redis": "redis-server"}
    found = {key: shutil.which(name) for key, name in names.items()}
    if all(found.values()):
        return found  # type: ignore[return-value]
    packages = ["prometheus", "prometheus-alertmanager", "redis-server"]
    if os.geteuid() == 0:
        print("installing Prometheus, Alertmanager and Redis from Debian ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return need_binaries()
    sys.exit(f"make demo needs Prometheus, Alertmanager and Redis: sudo apt-get install -y {' '.join(packages)}")


class Notifications:
    """Alertmanager's webhook: keeps what arrives, with the time it arrived."""

    def __init__(self) -> None:
        self.items: list[tuple[float, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.items.extend((time.monotonic(), alert) for alert in payload["alerts"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/alerts"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def firing(self, severity: str) -> list[dict[str, Any]]:
        return [a for _, a in self.items if a["status"] == "firing" and a["labels"].get("severity") == severity]


class Stack:
    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[Any]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None, **kwargs: Any
              ) -> subprocess.Popen[Any]:
        log = open(RUN / f"{name}.log", "w")
        process = subprocess.Popen(args, stdout=kwargs.pop("stdout", log), stderr=log, cwd=ROOT,
                                   env={**os.environ, **(env or {})}, **kwargs)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: {url} did not come up; logs in {RUN}") from None
            time.sleep(0.3)


def wait_listening(port: int, timeout: float = 120) -> None:
    """The model server answers only POST; loading the model takes a while on a busy machine."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: the model server did not listen on port {port}; logs in {RUN}") from None
            time.sleep(0.3)


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)["data"]["result"]


def by(results: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in results}


def live_table(prometheus: str, notifications: Notifications, progress: str, store: RedisBudgetStore) -> Any:
    from rich.table import Table

    client = APPS
    tokens = by(query(prometheus, f"sum by (user_id) (llm_token_usage_total{{{client}}})"), "user_id")
    cost = by(query(prometheus, f"sum by (user_id) (llm_cost_total{{{client}}})"), "user_id")
    served = by(query(prometheus, "sum by (user_id) (served_llm_token_usage_total)"), "user_id")
    departments = {u: r["metric"].get("department", "") for r in query(
        prometheus, f"count by (user_id, department) (llm_token_usage_total{{{client}}})")
        for u in [r["metric"].get("user_id", "")]}
    ratio = by(query(prometheus, "llm_quota:user_tokens:ratio"), "user_id")
    today = by(query(prometheus, "llm_quota:user_tokens:day_ratio"), "user_id")  # since 00:00 Asia/Shanghai
    table = Table(title=f"otel-tokens demo: token usage per user ({progress})")
    sources: dict[str, set[str]] = {}
    for r in query(prometheus, f"count by (user_id, llm_usage_source) (llm_token_usage_total{{{client}}})"):
        sources.setdefault(r["metric"].get("user_id", ""), set()).add(r["metric"].get("llm_usage_source", ""))
    refused = by(query(prometheus, f"sum by (user_id) (llm_requests_total{{{client},"
                                   f"error_type='QuotaExceededError'}})"), "user_id")
    for column in ("user", "department", "tokens", "counted how", "model server", "cost USD", "24h quota",
                   "today", "in Redis", "refused"):
        table.add_column(column, justify="left" if column in ("user", "department", "counted how") else "right",
                         no_wrap=True)
    for user in USERS:
        share = ratio.get(user)
        table.add_row(user, departments.get(user, ""), f"{tokens.get(user, 0):,.0f}",
                      "/".join(sorted(sources.get(user, ()))),
                      f"{served[user]:,.0f}" if user in served else "-", f"{cost.get(user, 0):.4f}",
                      f"{share:.0%}" if share is not None else "-",
                      f"{today[user]:.0%}" if user in today else "-", held(store, user), f"{refused.get(user, 0):,.0f}")
    for severity in ("warning", "critical"):
        for alert in notifications.firing(severity)[:1]:
            table.caption = (table.caption or "") + f"  [{severity.upper()}] {alert['annotations']['summary']}"
    return table


def held(store: RedisBudgetStore, user: str) -> str:
    """The user's rolling 24 h usage as budget mode's store holds it (only the budget-mode app counts there)."""
    try:
        tokens, _, in_flight = store.read(USER, user)
    except Exception:
        return "?"
    return f"{tokens:,}" + (f" ({in_flight} in flight)" if in_flight else "")


def write_configs(ports: dict[str, int], hook: str) -> None:
    # a stream without a usage block is counted with the model's own tokenizer, from its folder
    config = {**CONFIG, "tokenizers": {"tiny-chat-model": str(ensure())}}
    # the model server sits behind the apps: it may take who pays from their baggage
    (RUN / "otel-tokens.yaml").write_text(yaml.safe_dump({**config, "trust_baggage": True}))
    (RUN / "quotas.yml").write_text(yaml.safe_dump(QUOTAS))
    # the knowledge-base app: hard user quotas in Redis (budget mode); a call that would cross is shortened to what
    # remains (`fit`), refused only when nothing is left; department budgets only alert
    budget = {"quota_file": str(RUN / "quotas.yml"), "store": f"redis://127.0.0.1:{ports['redis']}/0",
              "rules": [{"scope": "user", "action": "fit", "level": "critical"}]}
    (RUN / "otel-tokens-app.yaml").write_text(yaml.safe_dump({**config, "guard": budget}))
    # the nightly job calls the paid API: past its user's warning it is served by the local model server instead,
    # at its critical refused (alert mode, Prometheus's alert state; the first rule that matches wins)
    local = {"model": "tiny-chat-model", "base_url": f"http://127.0.0.1:{ports['openai']}/v1",
             "api_key_env": "LOCAL_LLM_KEY"}
    alerts = {"source": f"http://127.0.0.1:{ports['prometheus']}/api/v1/alerts", "poll_interval": 1,
              "rules": [{"scope": "user", "action": "reject", "level": "critical"},
                        {"scope": "user", "action": "downgrade", "level": "warning", "downgrade": {"gpt-4o*": local}}]}
    (RUN / "otel-tokens-job.yaml").write_text(yaml.safe_dump({**config, "guard": alerts}))
    rules = RUN / "rules"
    rules.mkdir()
    (rules / "quotas.yml").write_text(render_text(parse_quotas(QUOTAS, "demo quotas"), for_="1s"))
    shutil.copy(ROOT / "collector" / "rules" / "static.yml", rules / "static.yml")
    alertmanager = yaml.safe_load(string.Template((ROOT / "collector" / "alertmanager.yml").read_text()).substitute(
        SMTP_SMARTHOST=f"127.0.0.1:{free_port()}", SMTP_FROM="demo@localhost", SMTP_AUTH_USERNAME="",
        SMTP_AUTH_PASSWORD="", SMTP_REQUIRE_TLS="false", ALERT_EMAIL_TO="oncall@localhost", ALERT_WEBHOOK_URL=hook,
        GUARD_URL="http://127.0.0.1:9", GUARD_TOKEN_FILE=str(RUN / "no-guard-token")))
    alertmanager["route"].update(group_wait="1s", group_interval="1s")  # demo timers; shipped ones in docs/quotas.md
    # the nightly job reads Prometheus's alert state itself: no `otel-tokens guard` endpoint in the demo
    alertmanager["route"]["routes"] = [r for r in alertmanager["route"]["routes"] if r.get("receiver") != "guard"]
    alertmanager["receivers"] = [r for r in alertmanager["receivers"] if r["name"] != "guard"]
    (RUN / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager))
    (RUN / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules / "*.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{ports['alertmanager']}"]}]}]},
        "scrape_configs": [
            {"job_name": "kb-chat", "static_configs": [{"targets": [f"127.0.0.1:{ports['traffic']}"]}]},
            {"job_name": "nightly-job", "static_configs": [{"targets": [f"127.0.0.1:{ports['job']}"]}]},
            # The model server counts the same tokens again: keep its accounting under other metric
            # names so quotas and reports count each token once, and the two sides can still be compared.
            {"job_name": "model-server", "static_configs": [{"targets": [f"127.0.0.1:{ports['server']}"]}],
             "metric_relabel_configs": [
                 {"source_labels": ["__name__"], "regex": "(llm_.*)", "target_label": "__name__",
                  "replacement": "served_$1"}]},
        ],
    }))


def show_grant(console: Any, prometheus: str, store: str) -> None:
    """What an operator does about eve's critical alert: her 24 h limit raised to twice what she used, for an hour
    (`otel-tokens quota grant`, which re-renders the rules and reloads Prometheus); the alert resolves; the audit
    log holds it."""
    env = {**os.environ, "OTEL_TOKENS_QUOTA_FILE": str(RUN / "quotas.yml"), "OTEL_TOKENS_BUDGET_STORE": store,
           "OTEL_TOKENS_AUDIT_LOG": str(RUN / "audit.jsonl")}
    cli = [str(BIN / "otel-tokens"), "quota"]
    used = by(query(prometheus, 'llm_quota:user_tokens:24h{user_id="eve"}'), "user_id").get("eve", 0.0)
    extra = max(1, round(2 * used) - QUOTAS["users"]["overrides"]["eve"]["tokens"])  # type: ignore[index]
    granted = subprocess.run([*cli, "grant", "--user", "eve", "--tokens", str(extra), "--window", "24h",
                              "--until", "+1h", "--reason", "nightly report due", "--by", "ops.li", "--rules",
                              str(RUN / "rules" / "quotas.yml"), "--reload", prometheus, "--for", "1s"],
                             env=env, capture_output=True, text=True)
    console.print()
    console.print(f"[bold cyan]GRANT:[/] {granted.stdout.strip() or granted.stderr.strip()}", soft_wrap=True)
    critical = 'ALERTS{alertname="LLMUserTokenQuota",user_id="eve",severity="critical",alertstate="firing"}'
    deadline = time.monotonic() + 20
    while query(prometheus, critical) and time.monotonic() < deadline:
        time.sleep(0.5)
    ratio = by(query(prometheus, 'llm_quota:user_tokens:ratio{user_id="eve"}'), "user_id").get("eve", 0.0)
    state = "still firing" if query(prometheus, critical) else "resolved"
    console.print(f"eve's critical alert {state} after the grant: {ratio:.0%} of her 24h limit with it (the grant "
                  "stops counting in an hour, with no re-render)", soft_wrap=True)
    audit = subprocess.run([*cli, "audit"], env=env, capture_output=True, text=True)
    console.print(f"audit log: {audit.stderr.strip()}", soft_wrap=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="otel-tokens demo")
    parser.add_argument("--fast", action="store_true", help="fewer rounds (what the test runs)")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from rich.console import Console
    from rich.live import Live

    console = Console(width=None if sys.stdout.isatty() else 110)
    binaries = need_binaries()
    model = ensure()
    shutil.rmtree(RUN, ignore_errors=True)
    RUN.mkdir(parents=True)
    notifications = Notifications()
    # openai: the model server's API; server / traffic: their metrics endpoints
    ports = {name: free_port() for name in ("prometheus", "alertmanager", "openai", "server", "traffic", "job",
                                            "redis", "paid")}
    write_configs(ports, notifications.url)
    stack = Stack()
    started = time.monotonic()
    try:
        stack.start("redis", [binaries["redis"], "--port", str(ports["redis"]), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(RUN)])
        store = RedisBudgetStore(f"redis://127.0.0.1:{ports['redis']}/0", timeout=1.0)
        stack.start("alertmanager", [binaries["alertmanager"], f"--config.file={RUN / 'alertmanager.yml'}",
                                     f"--storage.path={RUN / 'alertmanager-data'}", "--cluster.listen-address=",
                                     f"--web.listen-address=127.0.0.1:{ports['alertmanager']}"])
        prometheus = f"http://127.0.0.1:{ports['prometheus']}"
        stack.start("prometheus", [binaries["prometheus"], f"--config.file={RUN / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={RUN / 'prometheus-data'}", "--web.enable-lifecycle",
                                   f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                                   "--rules.alert.resend-delay=1s"])
        agent = [str(BIN / "opentelemetry-instrument"), sys.executable]
        telemetry = {"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_TRACES_EXPORTER": "none",
                     "OTEL_LOGS_EXPORTER": "none", "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
                     "OTEL_TOKENS_CONFIG": str(RUN / "otel-tokens.yaml")}
        stack.start("model-server", [*agent, "examples/local_model_server.py", "--port", str(ports["openai"]),
                                     "--model", str(model)],
                    {**telemetry, "OTEL_SERVICE_NAME": "model-server",
                     "OTEL_EXPORTER_PROMETHEUS_PORT": str(ports["server"])})
        # the paid API the nightly job calls (the same tiny model, answering as gpt-4o; not ours: not instrumented)
        stack.start("paid-api", [sys.executable, "examples/local_model_server.py", "--port", str(ports["paid"]),
                                 "--model", str(model), "--served-model-name", "gpt-4o"])
        wait_ready(f"{prometheus}/-/ready")
        wait_listening(ports["openai"])  # the traffic's first call would be refused
        wait_listening(ports["paid"])
        openai_url = f"http://127.0.0.1:{ports['openai']}/v1"
        app_env = {**telemetry, "OPENAI_BASE_URL": openai_url, "DEMO_MODEL": str(model),
                   "DEMO_ROUNDS": "4" if args.fast else "6"}
        traffic_started = time.monotonic()
        apps = {"kb-chat": stack.start("traffic", [*agent, "examples/demo_traffic.py"], {
                    **app_env, "OTEL_SERVICE_NAME": "kb-chat", "OTEL_TOKENS_CONFIG": str(RUN / "otel-tokens-app.yaml"),
                    "OTEL_EXPORTER_PROMETHEUS_PORT": str(ports["traffic"])},
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)}
        progress = {"kb-chat": "starting", "nightly-job": "waiting for the rules' first rollup"}
        events: list[str] = []  # what the apps say besides their progress: the guards' refusals

        def follow(name: str, app: subprocess.Popen[str]) -> None:
            assert app.stdout is not None
            for line in app.stdout:
                if line.startswith(("refused", "served", "status", "shortened")):
                    events.append(f"{name}: {line.strip()}")
                else:
                    progress[name] = line.strip()

        def start_nightly_job() -> None:
            """Once the rules' minute group has run (their first alert waits for it: up to a minute after Prometheus
            starts), so eve's warning is seen before her critical whatever the group's phase."""
            apps["nightly-job"] = stack.start("job", [*agent, "examples/demo_traffic.py"], {
                **app_env, "OTEL_SERVICE_NAME": "nightly-job", "DEMO_ONLY_RUNAWAY": "eve:finance",
                "OPENAI_BASE_URL": f"http://127.0.0.1:{ports['paid']}/v1", "DEMO_RUNAWAY_MODEL": "gpt-4o",
                "LOCAL_LLM_KEY": "local", "DEMO_RUNAWAY_PAUSE": "2",  # its own API is fast: paced
                "OTEL_TOKENS_CONFIG": str(RUN / "otel-tokens-job.yaml"),
                "OTEL_EXPORTER_PROMETHEUS_PORT": str(ports["job"])},
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            threading.Thread(target=follow, args=("nightly-job", apps["nightly-job"]), daemon=True).start()

        threading.Thread(target=follow, args=("kb-chat", apps["kb-chat"]), daemon=True).start()
        shown: set[str] = set()
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            while True:
                if "nightly-job" not in apps:
                    try:
                        if query(prometheus, series("user", "tokens", "24h_parts") + '{part="fallback_at"}'):
                            start_nightly_job()
                    except OSError:
                        pass
                try:
                    live.update(live_table(prometheus, notifications, progress["kb-chat"], store))
                except OSError:
                    pass
                for severity in ("warning", "critical"):
                    for alert in notifications.firing(severity):
                        key = severity + alert["labels"].get("user_id", alert["labels"].get("department", ""))
                        if key not in shown:
                            shown.add(key)
                            live.console.print(f"[bold {'yellow' if severity == 'warning' else 'red'}]"
                                               f"{severity.upper()} alert received after "
                                               f"{time.monotonic() - started:.0f}s:[/] "
                                               f"{alert['annotations']['description']}")
                while events:
                    event = events.pop(0)
                    style = "bold magenta" if "refused" in event else "cyan" if "local model" in event else "green"
                    live.console.print(f"[{style}]GUARD after {time.monotonic() - started:.0f}s:[/] {event}",
                                       soft_wrap=True)
                critical = {a["labels"].get("user_id") for a in notifications.firing("critical")}
                done = all(p == "traffic done" for p in progress.values()) and set(RUNAWAYS) <= critical
                stopped = any(app.poll() is not None for app in apps.values())
                if done or stopped or time.monotonic() - started > args.timeout:
                    break
                time.sleep(0.5)
            time.sleep(2)  # the last scrape and rule evaluation
            live.update(live_table(prometheus, notifications, "done", store))
        if not (notifications.firing("warning") and notifications.firing("critical")):
            console.print(f"[red]demo: expected a warning and a critical alert; logs are in {RUN}[/]")
            return 1
        # how far past its quota each runaway got, hard (budget mode) against soft (alert mode)
        used = by(query(prometheus, f"sum by (user_id) (llm_token_usage_total{{{APPS}}})"), "user_id")
        console.print()
        for user, where in RUNAWAYS.items():
            limit = QUOTAS["users"]["overrides"][user]["tokens"]  # type: ignore[index]
            store_view = f"; the budget store holds {held(store, user)}" if "budget" in where else ""
            console.print(f"{user} in {where}: stopped at {used.get(user, 0) / limit:.1%} of its 24h quota "
                          f"({used.get(user, 0):,.0f} of {limit:,} tokens by Prometheus{store_view})", soft_wrap=True)
        models = by(query(prometheus, "sum by (gen_ai_request_model) (llm_token_usage_total{job='nightly-job'})"),
                    "gen_ai_request_model")
        console.print(f"eve's nightly job asked the paid gpt-4o: {models.get('gpt-4o', 0):,.0f} tokens served by it, "
                      f"{models.get('tiny-chat-model', 0):,.0f} by the local model after its warning", soft_wrap=True)
        # every user the model server served: what the apps recorded against what the server generated
        console.print()
        client = by(query(prometheus, f"sum by (user_id) (llm_token_usage_total{{{APPS},"
                                      "gen_ai_provider_name='openai',gen_ai_request_model='tiny-chat-model'})"),
                    "user_id")
        served = by(query(prometheus, "sum by (user_id) (served_llm_token_usage_total)"), "user_id")
        differ = {user: (client.get(user, 0), tokens) for user, tokens in served.items()
                  if client.get(user, 0) != tokens}
        console.print(f"client side (openai SDK) vs server side (transformers, counted from the generate tensors), "
                      f"every user the server served: {'they agree' if not differ else 'they DIFFER'} "
                      f"({', '.join(sorted(served))})", soft_wrap=True)
        for user, (recorded, generated) in sorted(differ.items()):
            console.print(f"  {user}: recorded {recorded:,.0f}, generated {generated:,.0f} (no usage block: "
                          "re-tokenized text, see docs/integration.md)", soft_wrap=True)
        window = f"{int(time.monotonic() - traffic_started) + 5}s"  # the traffic, not an empty hour
        # the digest in the quota file's zone: each user's 24 h, day and month with its reset at local midnight
        report = [str(BIN / "otel-tokens"), "report", "--prometheus", prometheus, "--window", window,
                  "--quota-file", str(RUN / "quotas.yml"), "--png", str(ROOT / ".demo" / "usage.png")]
        if subprocess.run(report, cwd=ROOT).returncode == 0:
            console.print(f"PNG: {ROOT / '.demo' / 'usage.png'}")
        show_grant(console, prometheus, f"redis://127.0.0.1:{ports['redis']}/0")
        console.print(f"demo finished in {time.monotonic() - started:.0f}s; Prometheus data and logs in {RUN}")
        return 0
    except KeyboardInterrupt:
        console.print("interrupted: stopping everything")
        return 130
    finally:
        stack.stop()
        notifications.httpd.shutdown()


if __name__ == "__main__":
    sys.exit(main())
