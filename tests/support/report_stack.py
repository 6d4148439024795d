"""The report tests' stack: the report app driven through two windows of known usage, a real
Prometheus scraping it with the rendered quota rules. Shared by the report and the digest tests."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otel_tokens import names
from otel_tokens.ops.rules import render_text
from otel_tokens.quota.file import parse_quotas
from otel_tokens.quota.grants.model import Grant
from tests.support.binaries import require_binary
from tests.support.prometheus_stack import free_port, query, start_prometheus, stop_processes
from tests.support.quick_rules import quick_hourly_group
from tests.support.report_app import PRICE_PER_TOKEN

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Calls:
    user: str  # "-": no usage_context
    department: str
    model: str
    calls: int
    prompt: int
    new: int

    @property
    def input(self) -> int:
        return self.calls * self.prompt

    @property
    def output(self) -> int:
        return self.calls * self.new

    @property
    def cost(self) -> float:
        return self.input * PRICE_PER_TOKEN["input"] + self.output * PRICE_PER_TOKEN["output"]


PREVIOUS = [Calls("alice", "support", "tiny-gpt2", 2, 10, 40), Calls("carol", "research", "tiny-gpt2", 1, 10, 20)]
CURRENT = [
    Calls("alice", "support", "tiny-gpt2", 6, 10, 40),
    Calls("bob", "support", "tiny-chat", 3, 20, 30),
    Calls("carol", "research", "tiny-gpt2", 4, 10, 20),
    Calls("dave", "research", "tiny-chat", 2, 5, 50),
    Calls("erin", "sales", "tiny-gpt2", 1, 8, 12),
    Calls("-", "-", "tiny-chat", 1, 10, 15),
    Calls("frank", "sales", "tiny-chat", 1, 4, 6),
]
ERRORS = [("bob", "support", "tiny-chat")]  # one failing call in the current window
TOP = 5
QUOTAS = {
    "users": {"overrides": {"alice": {"tokens": 500}, "bob": {"cost": 0.001}, "zed": {"tokens": 1000}}},
    "departments": {"default": {"tokens": 1000}, "overrides": {"support": {"tokens": 2000, "cost": 0.01}}},
}
# grants in force through the test (start an hour before it, end a day after): on an override and on the default
GRANTS = [("user", "alice", "24h", 250), ("user", "alice", "24h", 50), ("department", "research", "month", 500)]


def grants(now: float) -> list[Grant]:
    return [Grant(f"g-{i:08x}", scope, name, window, amount, None, now - 3600, now + 86400, "report test", "ops", now)
            for i, (scope, name, window, amount) in enumerate(GRANTS, 1)]


def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real Prometheus scraping the report app after two windows of known traffic (PREVIOUS, CURRENT,
    ERRORS), with the quota rules of QUOTAS and GRANTS: what the report and the digest are checked against."""
    prometheus = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("report")
    began = time.time()
    app_port = free_port()
    app = subprocess.Popen([sys.executable, "-m", "tests.support.report_app", str(app_port)], cwd=ROOT, text=True,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(tmp / "app.log", "w"))
    processes: list[subprocess.Popen[Any]] = [app]
    try:
        rules = tmp / "rules"
        rules.mkdir()
        (rules / "quotas.yml").write_text(quick_hourly_group(render_text(parse_quotas(QUOTAS, "report test quotas"),
                                                                        for_="1s", grants=grants(began),
                                                                        now=began)))
        url, prom = start_prometheus(tmp, prometheus, [f"127.0.0.1:{app_port}"], str(rules / "*.yml"))
        processes.append(prom)
        assert app.stdout is not None and app.stdout.readline().strip() == "ready", (tmp / "app.log").read_text()

        def drive(calls: list[Calls], errors: list[tuple[str, str, str]]) -> None:
            assert app.stdin is not None and app.stdout is not None
            for c in calls:
                app.stdin.write(f"{c.user} {c.department} {c.model} {c.calls} {c.prompt} {c.new}\n")
            for user, department, model in errors:
                app.stdin.write(f"ERROR {user} {department} {model}\n")
            app.stdin.flush()
            for _ in range(len(calls) + len(errors)):
                assert app.stdout.readline().strip() == "done"

        def scraped(calls: list[Calls], errors: int) -> None:
            """Wait until Prometheus holds the app's final values."""
            tokens = sum(c.input + c.output for c in calls)
            requests = sum(c.calls for c in calls) + errors
            deadline = time.monotonic() + 30
            while True:
                got = {promql: sum(float(r["value"][1]) for r in query(url, promql))
                       for promql in (f"sum({names.PROM_LLM_TOKEN_USAGE})", f"sum({names.PROM_LLM_REQUESTS})")}
                if list(got.values()) == [tokens, requests]:
                    return
                assert time.monotonic() < deadline, (got, tokens, requests)
                time.sleep(0.2)

        first_call = time.time()
        drive(PREVIOUS, [])
        scraped(PREVIOUS, 0)
        time.sleep(1.2)  # a scrape after the final values, then the split between the windows
        split = time.time()
        time.sleep(1.2)
        drive(CURRENT, ERRORS)
        scraped(PREVIOUS + CURRENT, len(ERRORS))
        deadline = time.monotonic() + 30
        while not query(url, "llm_quota:user_tokens:limit_override"):  # the quota rules have run
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # the current window is (split, at], the previous one (split - W, split]: all of PREVIOUS
        window = math.ceil(max(time.time() - split, split - first_call)) + 1
        at = split + window
        while time.time() < at + 0.5:
            time.sleep(0.1)
        yield {"url": url, "at": at, "window": window, "before": began - 60, "tmp": tmp, "prometheus": prometheus}
    finally:
        stop_processes(processes)
