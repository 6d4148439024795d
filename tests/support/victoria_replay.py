"""Recording rules replayed on VictoriaMetrics' engine (MetricsQL) over imported history: each rule of a rendered
file evaluated in order over a range at a fixed step, its results imported before the next rule reads them (as
vmalert writes them back). vmalert's own replay mode cannot be used: it refuses the `query` template the alerts'
annotations use."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any


def get(url: str, path: str, **params: Any) -> Any:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=120) as response:
        data = json.load(response)["data"]
    return data if isinstance(data, list) else data["result"]  # /series answers a list


def import_lines(url: str, lines: list[dict[str, Any]]) -> None:
    body = "\n".join(json.dumps(line) for line in lines).encode()
    urllib.request.urlopen(urllib.request.Request(f"{url}/api/v1/import", data=body, method="POST"), timeout=120)
    urllib.request.urlopen(f"{url}/internal/force_flush", timeout=60)


def visible(url: str, name: str, count: int, start: float) -> None:
    """Waits until `count` series match `name` (an import is searchable a moment after it is flushed)."""
    deadline = time.monotonic() + 60
    while len(get(url, "/api/v1/series", **{"match[]": name, "start": start})) < count:
        assert time.monotonic() < deadline, f"{name}: written, never searchable"
        time.sleep(0.2)


def series_line(labels: Mapping[str, str], start: int, step: int, values: list[float]) -> dict[str, Any]:
    times = [(start + i * step) * 1000 for i in range(len(values))]
    return {"metric": dict(labels), "values": values, "timestamps": times}


def _in_dependency_order(rule_file: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The recording rules, each after the rules whose series it reads (file order otherwise): a replay computes
    each over the whole range at once, so a group that reads another group written later in the file (the closed
    months, the year's sum of them) must come after it."""
    rules = [rule for group in rule_file["groups"] for rule in group["rules"] if "record" in rule]
    ordered: list[Mapping[str, Any]] = []
    done: set[int] = set()

    def reads(rule: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
        return other is not rule and re.search(rf"{re.escape(other['record'])}(?![\w:])", rule["expr"]) is not None

    def visit(i: int, path: tuple[int, ...] = ()) -> None:
        if i in done or i in path:
            return
        for j, other in enumerate(rules):
            if j != i and reads(rules[i], other) and rules[i]["record"] != other["record"]:
                visit(j, (*path, i))
        done.add(i)
        ordered.append(rules[i])

    for i in range(len(rules)):
        visit(i)
    return ordered


def replay(url: str, rule_file: Mapping[str, Any], start: int, end: int, step: int) -> None:
    """Every recording rule of the file over [start, end] at `step`, in dependency order, written back."""
    for rule in _in_dependency_order(rule_file):
        result = get(url, "/api/v1/query_range", query=rule["expr"], start=start, end=end, step=step)
        if not result:
            continue
        lines = [{"metric": {**r["metric"], **rule.get("labels", {}), "__name__": rule["record"]},
                  "values": [float(v) for _, v in r["values"]],
                  "timestamps": [int(t) * 1000 for t, _ in r["values"]]} for r in result]
        import_lines(url, lines)
        visible(url, rule["record"], len(lines), start - 3600)


def at(url: str, promql: str, t: float, label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in get(url, "/api/v1/query", query=promql, time=t)}
