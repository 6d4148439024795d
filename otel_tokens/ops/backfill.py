"""`otel-tokens rules-backfill`: the first-level rollups of a rule file computed from raw history, as
TSDB blocks, so that rules deployed on a Prometheus that already holds the raw data are right at once
(no blind first day of the rolling window, no blind first month).

Only rules over raw data can be backfilled from it (promtool does not chain recorded series), which
is why the rollups are first-level and the window sums are computed live from them. The blocks go
into Prometheus's data directory; Prometheus 2.42 merges overlapping blocks when it next starts.
vmalert does the same with `-replay.timeFrom` / `-replay.timeTo` (docs/quotas.md).

The rules read the per-principal counters (llm_quota_tokens_total, llm_quota_cost_total), which an app
exports only since it runs a version that has them; the accounting counters (llm_token_usage_total,
llm_cost_total) hold the same totals split by model and token type, for all of the history. So the rollups
are computed from the accounting counters (`--counters quota` reads the per-principal ones): a deployment
upgraded today gets its rolling window and month to date from before the upgrade.

A rollup is written once per bucket, at whatever second of its minute its evaluation falls; a bucket
written both live and by the backfill (at two stamps) would count twice, so a range that already holds
rollup samples (the rules were deployed before --end) is refused.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from otel_tokens.config import read_yaml
from otel_tokens.config.errors import ConfigError
from otel_tokens.ops.rules import PREFIX
from otel_tokens.prometheus_api import Prometheus, PrometheusError
from otel_tokens.quota.vocabulary import ACCOUNTING_COUNTERS, COUNTERS

DEFAULT_EVAL_INTERVAL = "60s"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


COUNTER_SOURCES = ("accounting", "quota")


def over_accounting(expr: str) -> str:
    """The expression over the accounting counters: same per-principal totals, more series each."""
    for kind, counter in COUNTERS.items():
        expr = re.sub(rf"(?<![\w:]){re.escape(counter)}(?![\w:])", ACCOUNTING_COUNTERS[kind], expr)
    return expr


def first_level(rule_file: dict[str, Any], counters: str = "accounting") -> dict[str, Any]:
    """The groups of a rule file reduced to their recording rules over the raw counters (no `llm_quota:`
    input): the rollups, over the accounting counters unless `counters` is "quota". Limits and other
    constants are recorded live."""
    groups = []
    for group in rule_file.get("groups") or []:
        rules = [r for r in group.get("rules") or [] if "record" in r and f"{PREFIX}:" not in str(r.get("expr"))
                 and any(counter in str(r.get("expr")) for counter in (*COUNTERS.values(),
                                                                       *ACCOUNTING_COUNTERS.values()))]
        if counters == "accounting":
            rules = [{**r, "expr": over_accounting(str(r["expr"]))} for r in rules]
        if rules:
            groups.append({**{k: v for k, v in group.items() if k != "rules"}, "rules": rules})
    return {"groups": groups}


def rollups_held(prometheus: str, names: list[str], start: int, end: int) -> int:
    """How many samples of these recorded series Prometheus holds stamped in [start, end]."""
    matcher = '{__name__=~"' + "|".join(names) + '"}'
    try:
        found = Prometheus(prometheus).instant(f"sum(count_over_time({matcher}[{end - start}s]))", end)
    except PrometheusError as error:
        raise ConfigError("--prometheus", "url", prometheus, f"cannot be read: {error}") from None
    return int(found[0][1]) if found else 0


def backfill(rules_path: Path, prometheus: str, start: int, end: int, output: Path,
             eval_interval: str = DEFAULT_EVAL_INTERVAL, counters: str = "accounting") -> list[str]:
    """Write blocks of the first-level rollups over [start, end] into output; returns the rules backfilled."""
    promtool = shutil.which("promtool")
    if promtool is None:
        raise ConfigError(str(rules_path), "promtool", None, "is needed (Debian: apt-get install prometheus)")
    data = read_yaml(rules_path, "rule file")
    if not isinstance(data, dict):
        raise ConfigError(str(rules_path), "(top level)", type(data).__name__, "is not a rule file")
    if counters not in COUNTER_SOURCES:
        raise ConfigError("--counters", "counters", counters, f"is not one of {', '.join(COUNTER_SOURCES)}")
    selected = first_level(data, counters)
    names = [r["record"] for g in selected["groups"] for r in g["rules"]]
    for name in names:  # they go into a PromQL matcher: only metric names, nothing that could widen it
        if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
            raise ConfigError(str(rules_path), "record", name, "is not a metric name")
    if not names:
        raise ConfigError(str(rules_path), "groups", None, "hold no recording rule over raw data to backfill")
    if not start < end:
        raise ConfigError("--start/--end", "range", f"{start}..{end}", "is empty: --start must be before --end")
    held = rollups_held(prometheus, names, start, end)
    if held:
        raise ConfigError("--end", "time", end, f"is too late: {prometheus} already holds {held} rollup samples "
                          "from --start to --end; end the backfill when the rules were deployed, or those buckets "
                          "count twice")
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="otel-tokens-backfill-") as tmp:
        rollups = Path(tmp) / "rollups.yml"
        rollups.write_text(yaml.safe_dump(selected, sort_keys=False))
        result = subprocess.run([promtool, "tsdb", "create-blocks-from", "rules", f"--start={start}", f"--end={end}",
                                 f"--url={prometheus}", f"--output-dir={output}", f"--eval-interval={eval_interval}",
                                 str(rollups)], capture_output=True, text=True)
    if result.returncode != 0:
        raise ConfigError("promtool", "create-blocks-from rules", result.returncode,
                          f"failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    return names
