"""Budget mode in tests: an instrumented process-local app (the real openai SDK against the local
OpenAI-compatible server), its quota file, and readers of what the store holds."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import yaml

from otel_tokens import TokenUsageInstrumentor, usage_context
from otel_tokens.config.settings import BudgetSettings, GuardRule, GuardSettings, Settings
from otel_tokens.quota.budget.store import NANO
from otel_tokens.quota.vocabulary import DEPARTMENT, USER
from otel_tokens.recording.recorder import Recorder
from tests.support.openai_server import OpenAIServer
from tests.support.telemetry import Telemetry, make_telemetry

# Refused at the call that would cross 100 % in every scope: what budget mode did without rules before `fit` became
# its default (the tests of refusals themselves)
REJECT_ALL = (GuardRule("user", "reject"), GuardRule("department", "reject"), GuardRule("app", "reject"))
PRICES = ({"match": "gpt-4o", "currency": "USD", "input": 2.5, "output": 10.0},
          {"match": "gpt-4o-mini", "currency": "USD", "input": 0.15, "output": 0.6})


def write_quotas(path: Path, users: dict[str, Any], departments: dict[str, Any] | None = None,
                 warning_ratio: float = 0.8, timezone: str | None = None, apps: dict[str, Any] | None = None) -> Path:
    data: dict[str, Any] = {"warning_ratio": warning_ratio, "users": users}
    if timezone:
        data["timezone"] = timezone
    if departments:
        data["departments"] = departments
    if apps:
        data["apps"] = apps
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class BudgetApp:
    recorder: Recorder
    tel: Telemetry
    server: OpenAIServer
    client: openai.OpenAI
    instrumentor: TokenUsageInstrumentor

    def ask(self, user: str | None, department: str | None = "sales", model: str = "gpt-4o",
            max_tokens: int | None = 30, **kwargs: Any) -> Any:
        options = {"max_tokens": max_tokens} if max_tokens is not None else {}
        with usage_context(user_id=user, department=department):
            return self.client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], **options, **kwargs)

    def held(self, user: str, scope: Any = USER) -> tuple[int, float, int]:
        """(tokens, cost, reservations in flight) in the store, after the queued settlements ran."""
        budget = self.recorder.enforcement.budget
        assert budget is not None
        budget.flush()
        tokens, cost, flight = budget.store.read(scope, user)
        return tokens, cost / NANO, flight

    def department(self, name: str) -> tuple[int, float, int]:
        return self.held(name, DEPARTMENT)

    def metric_tokens(self, user: str) -> int:
        return sum(v for (u,), v in self.tel.token_totals("user.id").items() if u == user)

    def metric_cost(self, user: str) -> float:
        from otel_tokens import names

        return sum(p.value for p in self.tel.metrics().get(names.METRIC_LLM_COST, [])
                   if p.attributes.get("user.id") == user)

    def decisions(self, window: bool = False) -> dict[tuple[str, ...], int]:
        """(decision, scope) -> count; with `window`, (decision, scope, window)."""
        from otel_tokens import names

        keys = (names.GUARD_DECISION, names.GUARD_SCOPE) + ((names.GUARD_WINDOW,) if window else ())
        return {tuple(p.attributes[k] for k in keys): p.value
                for p in self.tel.metrics().get(names.METRIC_GUARD_DECISIONS, [])}


def budget_app(quota_file: Path, store: str, rules: tuple[GuardRule, ...] = (), fail_closed: bool = False,
               server: dict[str, Any] | None = None, directory: Path | None = None, app: str | None = None,
               tokenizers: dict[str, str] | None = None, **guard: Any) -> Iterator[BudgetApp]:
    tel, tracer_provider, meter_provider = make_telemetry()
    limits = BudgetSettings(quota_file=quota_file, store=store, **{"quota_reload_interval": 0.05, **guard})
    settings = Settings(prices=PRICES, guard=GuardSettings(budget=limits, rules=rules, fail_closed=fail_closed),
                        directory=directory, app=app, tokenizers=tokenizers or {})
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, settings=settings)
    try:
        with OpenAIServer(**(server or {})) as local:
            client = openai.OpenAI(base_url=local.base_url, api_key="x", max_retries=0)
            yield BudgetApp(instrumentor.recorder, tel, local, client, instrumentor)
    finally:
        instrumentor.uninstrument()


ROOT = Path(__file__).resolve().parents[2]


def run_budget_apps(server: OpenAIServer, envs: list[dict[str, str]]) -> list[dict]:
    """One `tests.support.budget_app` process per environment, all at once against `server` (their OTEL_*
    variables only those given), and the JSON line each printed."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.support.budget_app"], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**base, "OPENAI_BASE_URL": server.base_url, **env}) for env in envs]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def packed_windows(raw: bytes | None) -> dict[str, tuple[int, int, int, int, int]]:
    """A principal's `S` field in the store (lua_state: the number of windows, then per window its prefix, zero
    terminated, and five doubles): prefix -> (current bucket, T, C, the bucket's t, c)."""
    out: dict[str, tuple[int, int, int, int, int]] = {}
    if not raw:
        return out
    at = 1
    for _ in range(raw[0]):
        end = raw.index(b"\0", at)
        prefix = raw[at:end].decode()
        values = struct.unpack_from("=5d", raw, end + 1)
        out[prefix] = tuple(int(v) for v in values)  # type: ignore[assignment]
        at = end + 1 + 40
    return out
