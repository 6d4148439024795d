"""The history an upgrade to the per-principal counters leaves: two users' usage, +1 (alice) and +3 (bob) a
minute, until two hours before the end in the accounting counters only (process app:1), then from a
restarted process (app:2) that exports the per-principal llm_quota_* counters too, all from zero. Written
for promtool (OpenMetrics); the rolling window's truth with it."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from otel_tokens import names

STEP = 60  # one sample a minute keeps 25 h of history small
RATES = {"alice": 1, "bob": 3}
Sample = tuple[str, tuple[tuple[str, str], ...], int, int]  # metric, labels, value, unix seconds


def samples(start: int, end: int) -> list[Sample]:
    upgrade = end - 2 * 3600
    out: list[Sample] = []
    for user, rate in RATES.items():
        accounting = {"user_id": user, "department": "eng", "gen_ai_token_type": "input", "job": "app"}
        for i, t in enumerate(range(start, upgrade, STEP)):
            out.append((names.PROM_LLM_TOKEN_USAGE, tuple({**accounting, "instance": "app:1"}.items()), i * rate, t))
        for i, t in enumerate(range(upgrade, end + 1, STEP)):
            out.append((names.PROM_LLM_TOKEN_USAGE, tuple({**accounting, "instance": "app:2"}.items()),
                        (i + 1) * rate, t))
            out.append((names.PROM_QUOTA_TOKENS, tuple({"user_id": user, "department": "eng", "job": "app",
                                                         "instance": "app:2"}.items()), (i + 1) * rate, t))
    return out


def write_openmetrics(path: Path, history: list[Sample]) -> None:
    """One family at a time, each series' samples in time order, as promtool wants them."""
    families: dict[str, list[str]] = defaultdict(list)
    for metric, labels, value, t in history:
        selector = ",".join(f'{k}="{v}"' for k, v in labels)
        families[metric].append(f"{metric}{{{selector}}} {value} {t}")
    lines = []
    for metric, rows in families.items():
        lines += [f"# TYPE {metric.removesuffix('_total')} counter", *rows]
    path.write_text("\n".join(lines) + "\n# EOF\n")


def truths(end: int) -> list[dict[str, int]]:
    """The rolling 24 h of each user at the latest 5-minute boundary, and at the one before (a boundary may
    pass between the rule's evaluation and the query)."""
    boundary = int(time.time()) // 300 * 300
    return [{user: rate * ((end - (b - 86400)) // STEP) for user, rate in RATES.items()} for b in (boundary,
                                                                                                   boundary - 300)]
