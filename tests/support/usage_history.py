"""Weeks of the package's counters, written as OpenMetrics for `promtool tsdb create-blocks-from
openmetrics`, with the ground truth kept beside them: what each scrape added (a process's first
scrape adds its whole value: a new or restarted process counts from zero)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

STEP = 300  # one scrape every 5 minutes keeps five weeks small
METRICS = {"tokens": "llm_token_usage", "cost": "llm_cost", "requests": "llm_requests"}


@dataclass
class History:
    # (metric, labels) -> [(t, value)], one process after another under the same labels
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[int, float]]] = field(
        default_factory=lambda: defaultdict(list))
    # what each scrape added: (metric, labels, t, amount)
    added: list[tuple[str, dict[str, str], int, float]] = field(default_factory=list)

    def process(self, metric: str, labels: dict[str, str], times: Iterable[int], amount: float | list[float]) -> None:
        """One process's counter: from zero, growing by `amount` (or amount[i]) at each scrape time."""
        key = (metric, tuple(sorted(labels.items())))
        value = 0.0
        for i, t in enumerate(times):
            step = amount[i] if isinstance(amount, list) else amount
            value += step
            self.samples[key].append((t, value))
            self.added.append((metric, labels, t, step))

    def truth(self, metric: str, start: float, end: float, by: str) -> dict[str, float]:
        """What was added in (start, end], summed by one label ('' -> '__unattributed__')."""
        out: dict[str, float] = defaultdict(float)
        for m, labels, t, amount in self.added:
            if m == metric and start < t <= end:
                out[labels.get(by) or "__unattributed__"] += amount
        return dict(out)

    def write(self, path: Path) -> None:
        lines = []
        for metric in METRICS.values():
            keys = [k for k in self.samples if k[0] == metric]
            if not keys:
                continue
            lines.append(f"# TYPE {metric} counter")
            for key in sorted(keys):
                labels = ",".join(f'{k}="{v}"' for k, v in key[1])
                lines += [f"{metric}_total{{{labels}}} {value!r} {t}" for t, value in self.samples[key]]
        path.write_text("\n".join(lines) + "\n# EOF\n")


def every(start: int, end: int, step: int = STEP) -> range:
    """Scrape times from start to end inclusive."""
    return range(start, end + 1, step)
