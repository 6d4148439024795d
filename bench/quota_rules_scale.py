"""Cost of the quota rules per evaluation as users grow, on a real Prometheus (`make bench-scale`).

    python bench/quota_rules_scale.py [--users 100 1000] [--series 4] [--hours 24.5]
        [--raw-hours H] [--scrape-minutes M] [--rules FILE] [--json FILE]

Per size: counters for N users x S series of llm_token_usage_total and of llm_cost_total (one sample
every 10 s, as the shipped scrape interval gives, each series growing by a random amount; the series of a
user alternate between 2 processes), and per user and process the per-principal llm_quota_tokens_total and
llm_quota_cost_total the package exports beside them (their sums), are written as OpenMetrics and
imported with `promtool tsdb create-blocks-from openmetrics`; a real
Prometheus then opens that TSDB with the rule file rendered by `otel-tokens rules` from a quota file
with user and department limits (or --rules), evaluating every 10 s; the rule file's first-level
rollups are first backfilled over the history (`otel-tokens rules-backfill`), so what is measured is
the steady state of rules that have run all along. With --raw-hours, only the last H hours are raw
counters and the users' rollups for the rest of the window are synthesized the way the rules record
them (one sample per bucket), so 10,000 users are measured, not extrapolated. With
--scrape-minutes, Prometheus first scrapes live counters of the same users for M minutes.

Printed per size, after a few evaluations: each quota group's evaluation seconds (mean of the last
evaluations, from `/api/v1/rules`) and interval; the user groups' cost per 10 s (each group's
seconds scaled by its interval; in brackets as if every group ran every 10 s) and its ratio to one
raw scan of the same data (`sum by (user_id) (count_over_time(llm_token_usage_total[24h]))`, the
median of 5 instant queries); whether the recorded rolling 24 h of the first users equals the truth
from the generated data; Prometheus's RSS; the series the rules add.

Ratios, not asserts: nothing here fails on a slow machine. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from _live_counters import LiveCounters  # noqa: E402
from _prometheus import free_port, wait_ready  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from otel_tokens.ops.backfill import backfill, first_level, over_accounting  # noqa: E402
from otel_tokens.ops.durations import duration_seconds, human_duration  # noqa: E402
from otel_tokens.ops.rules import render_text  # noqa: E402
from otel_tokens.quota.file import parse_quotas  # noqa: E402

STEP = 10  # seconds between samples: the shipped scrape interval
BUCKET = 300
COMPACTIONS = {"prometheus_tsdb_compactions", "prometheus_tsdb_vertical_compactions"}  # counters, less _total
CHECKED_USERS = 3
QUOTAS = {"warning_ratio": 0.8,
          "users": {"default": {"tokens": 200_000, "cost": 5}, "overrides": {"user-0": {"tokens": 2_000_000}}},
          "departments": {"default": {"tokens": 50_000_000, "cost": 1000}}}
RAW_SCAN = "sum by (user_id) (count_over_time(llm_token_usage_total[24h]))"
# the least any rule that sees a crossing from raw data must do each evaluation: read every series it reads once
ONE_READ = ('sum by (user_id) (last_over_time(llm_quota_tokens_total{user_id!=""}[10m]))'
            ' + on(user_id) sum by (user_id) (last_over_time(llm_quota_cost_total{user_id!=""}[10m]))')
PROCESSES = 2


def _labels(user: int, s: int) -> str:
    model, token_type = f"model-{s // 2}", ("input", "output")[s % 2]
    return (f'{{user_id="user-{user}",department="dept-{user % 20}",gen_ai_request_model="{model}",'
            f'gen_ai_token_type="{token_type}",job="app",instance="app:{s % 2}"}}')


def write_openmetrics(path: Path, users: int, series: int, start: int, end: int, raw_from: int,
                      seed: int = 7) -> tuple[int, dict[int, list[tuple[int, int]]]]:
    """Counters for every user x series, one sample every STEP from raw_from to end, each growing by
    0-3 tokens a step (cost: 1e-5 a token). Before raw_from (the --raw-hours option), the rollups
    the rules would have recorded from them instead: each user's usage per 5-minute bucket, stamped
    60 s after the bucket's end (the counters start from zero at raw_from, as processes started then).
    Returns the samples written and, for the first users, their token usage as (end of step or bucket,
    tokens) pairs, to check the rules' result against."""
    rng = np.random.default_rng(seed)
    steps = np.arange(raw_from, end, STEP)
    rollup_ends = np.arange(start // BUCKET * BUCKET + BUCKET, raw_from - BUCKET + 1, BUCKET)
    rollup_ends = rollup_ends[rollup_ends > start]
    samples, kept = 0, {user: [] for user in range(min(users, CHECKED_USERS))}
    principals: dict[str, np.ndarray] = {}  # per kind: [user, process, step] cumulative, the per-principal counters
    with path.open("w") as out:
        for metric, scale in (("llm_token_usage", 1), ("llm_cost", 0.00001)):
            out.write(f"# TYPE {metric} counter\n")
            rollups: list[str] = []
            sums = principals[metric] = np.zeros((users, PROCESSES, len(steps)), dtype=np.int64)
            for user in range(users):
                per_bucket = np.zeros(len(rollup_ends), dtype=np.int64)
                for s in range(series):
                    if len(rollup_ends):
                        per_bucket += rng.integers(0, 4, size=(len(rollup_ends), BUCKET // STEP)).sum(axis=1)
                    grow = rng.integers(0, 4, size=len(steps))
                    grow[0] = 0
                    if metric == "llm_token_usage" and user in kept:
                        kept[user] += zip(steps.tolist(), grow.tolist(), strict=True)
                    labels = _labels(user, s)
                    sums[user, s % PROCESSES] += np.cumsum(grow)
                    values = np.cumsum(grow) * scale
                    out.write("".join(f"{metric}_total{labels} {v:.6g} {t}\n"
                                      for v, t in zip(values, steps, strict=True)))
                    samples += len(steps)
                if metric == "llm_token_usage" and user in kept:
                    kept[user] += zip(rollup_ends.tolist(), per_bucket.tolist(), strict=True)
                if len(rollup_ends):
                    name = f"llm_quota:user_{'tokens' if scale == 1 else 'cost'}:5m"
                    rollups.append("".join(f'{name}{{user_id="user-{user}"}} {v * scale:.6g} {t + 60}\n'
                                           for v, t in zip(per_bucket, rollup_ends, strict=True)))
            if rollups:
                out.write(f"# TYPE llm_quota:user_{'tokens' if scale == 1 else 'cost'}:5m gauge\n")
                out.writelines(rollups)
                samples += users * len(rollup_ends)
        for metric, name, extra in (("llm_token_usage", "llm_quota_tokens", ""),
                                    ("llm_cost", "llm_quota_cost", ',currency="USD"')):
            scale = 1 if metric == "llm_token_usage" else 0.00001
            out.write(f"# TYPE {name} counter\n")
            for user in range(users):
                for process in range(PROCESSES):
                    labels = (f'{{user_id="user-{user}",department="dept-{user % 20}",job="app",'
                              f'instance="app:{process}"{extra}}}')
                    out.write("".join(f"{name}_total{labels} {v * scale:.6g} {t}\n"
                                      for v, t in zip(principals[metric][user, process], steps, strict=True)))
                    samples += len(steps)
        out.write("# EOF\n")
    return samples, kept


def get(url: str, path: str, **params: str) -> dict:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}{path}{query}", timeout=300) as response:
        return json.load(response)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def exact(url: str, kept: dict[int, list[tuple[int, int]]]) -> bool:
    """The rules' rolling 24 h of the checked users against the truth at the latest boundary (or the one
    before: it may pass between the evaluation and the query)."""
    checked = "|".join(f"user-{u}" for u in kept)
    answer = get(url, "/api/v1/query", query=f'llm_quota:user_tokens:24h{{user_id=~"{checked}"}}')
    got = {r["metric"]["user_id"]: float(r["value"][1]) for r in answer["data"]["result"]}
    boundary = int(time.time()) // BUCKET * BUCKET
    truths = [{f"user-{u}": float(sum(v for t, v in pairs if t > b - 86400)) for u, pairs in kept.items()}
              for b in (boundary, boundary - BUCKET)]
    return bool(got) and got in truths


TERMS = ("window", "drop", "drop2", "latest", "base")  # rollups.rolling_usage's terms, in its order


def _terms(window: str) -> list[tuple[str, str]]:
    """The top-level terms of the window's `sum by (...) (A\nor B ...)`, named (by `label_replace(EXPR,
    "term", NAME, "", "")` where the rules label them so, else by their place)."""
    body = window[window.index("(\n") + 2:window.rindex("\n)")]
    pieces, depth, start = [], 0, 0
    for i, char in enumerate(body):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and body.startswith("\nor ", i):
            pieces.append(body[start:i])
            start = i + len("\nor ")
    pieces.append(body[start:])
    out = []
    for n, piece in enumerate(pieces):
        match = re.fullmatch(r'label_replace\(\n(.*),\n"term", "(\w+)", "", ""\)', piece.strip(), re.S)
        out.append((match.group(1), match.group(2)) if match else (piece.strip(), TERMS[n] if n < len(TERMS)
                                                                    else f"term{n}"))
    return out


def breakdown(url: str, rules_text: str) -> dict[str, float]:
    """Seconds of each part of the users' rolling 24 h (tokens) as an instant query (median of 5): where the
    users group's time goes."""
    (rule,) = [r for g in yaml.safe_load(rules_text)["groups"] for r in g["rules"]
               if r.get("record") == "llm_quota:user_tokens:24h"]
    terms = _terms(rule["expr"])
    seconds = timed_queries(url, [expr for expr, _ in terms])
    return {name: seconds[expr] for expr, name in terms}


def timed_queries(url: str, exprs: list[str]) -> dict[str, float]:
    """Seconds of each expression as an instant query (`count(...)`, median of 5): a candidate rule timed
    against the same data as the shipped ones."""
    out = {}
    for expr in exprs:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            get(url, "/api/v1/query", query=f"count({expr})")
            times.append(time.perf_counter() - t)
        out[expr] = statistics.median(times)
    return out


def wait_compacted(url: str, limit_s: float = 1200) -> float:
    """Wait until Prometheus has merged the backfilled blocks into the imported ones (vertical
    compactions, once a minute), so that compaction does not run during the measurement."""
    def count() -> float:
        with urllib.request.urlopen(f"{url}/metrics", timeout=60) as response:
            families = text_string_to_metric_families(response.read().decode())
        return sum(sample.value for family in families if family.name in COMPACTIONS for sample in family.samples)

    t0 = time.monotonic()
    last, still_since = count(), time.monotonic()
    while time.monotonic() - still_since < 90 and time.monotonic() - t0 < limit_s:
        time.sleep(10)
        now = count()
        if now != last:
            last, still_since = now, time.monotonic()
    return time.monotonic() - t0


def measure(users: int, series: int, hours: float, raw_hours: float, rules_text: str, work: Path,
            scrape_minutes: float = 0, also: list[str] | None = None) -> dict:
    end = int(time.time()) // STEP * STEP
    start = end - int(hours * 3600)
    raw_from = max(start, (end - int(raw_hours * 3600)) // BUCKET * BUCKET)
    data = work / f"data-{users}"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    text = work / f"raw-{users}.om"
    t0 = time.monotonic()
    samples, kept = write_openmetrics(text, users, series, start, end, raw_from)
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(text), str(data)], check=True,
                   capture_output=True)
    text.unlink()
    imported = time.monotonic() - t0
    rules = work / "quotas.yml"
    rules.write_text(rules_text)
    port = free_port()
    config = work / "prometheus.yml"
    scrape = ""
    live = None
    if scrape_minutes:
        live = LiveCounters(users, series, CHECKED_USERS)
        server = live.serve()
        scrape = (f"  - job_name: app\n    honor_labels: true\n    scrape_timeout: 10s\n"
                  f"    static_configs: [{{targets: ['127.0.0.1:{server.server_address[1]}']}}]\n")
    config.write_text(f"global:\n  scrape_interval: 10s\n  evaluation_interval: 10s\nrule_files: ['{rules}']\n"
                      f"scrape_configs:\n  - job_name: self\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
                      + scrape)
    log = (work / f"prometheus-{users}.log").open("w")
    # 2 h blocks only: no compaction of the imported history into larger blocks during the measurement
    process = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data}",
                                f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=30d",
                                "--storage.tsdb.max-block-duration=2h"],
                               stdout=log, stderr=subprocess.STDOUT)
    deployed = int(time.time())
    url = f"http://127.0.0.1:{port}"
    backfilled = 0.0
    if first_level(yaml.safe_load(rules_text))["groups"]:
        # steady state: the rollups as if the rules had run all along (otel-tokens rules-backfill)
        t0 = time.monotonic()
        try:
            wait_ready(url, process, log.name)
            backfill(rules, url, raw_from, deployed, work / "blocks", counters="quota")  # up to the deploy
        finally:
            process.terminate()
            process.wait(timeout=120)
        backfilled = time.monotonic() - t0
        for block in (work / "blocks").iterdir():
            shutil.move(str(block), data / block.name)
        process = subprocess.Popen(process.args, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, process, log.name)
        quiet = wait_compacted(url)
        time.sleep(scrape_minutes * 60)  # the recent raw data in the head, as in production
        durations: dict[str, list[float]] = {}
        per_rule: dict[str, list[float]] = {}  # "group/record or alert #n": seconds, where a group's time goes
        seen: set[tuple[str, str]] = set()
        deadline = time.monotonic() + max(400, 30 + users * 0.05)  # 5 evaluations of a 1-minute group at least
        while time.monotonic() < deadline and (not durations or min(map(len, durations.values())) < 5):
            for group in get(url, "/api/v1/rules")["data"]["groups"]:
                key = (group["name"], group.get("lastEvaluation", ""))
                if group.get("lastEvaluation", "").startswith("0001") or key in seen:
                    continue
                seen.add(key)
                durations.setdefault(group["name"], []).append(float(group["evaluationTime"]))
                for n, rule in enumerate(group["rules"]):
                    per_rule.setdefault(f"{group['name']}/{rule['name']} #{n}", []).append(
                        float(rule.get("evaluationTime", 0)))
            time.sleep(2)
        scans, reads = [], []
        for _ in range(5):
            t = time.perf_counter()
            get(url, "/api/v1/query", query=RAW_SCAN)
            scans.append(time.perf_counter() - t)
            t = time.perf_counter()
            get(url, "/api/v1/query", query=ONE_READ)
            reads.append(time.perf_counter() - t)
        if live is not None:
            live.frozen = True
            time.sleep(3 * STEP)  # the last growth scraped and evaluated
            with live.lock:
                for user, pairs in live.usage.items():
                    kept[user] += pairs
        exact_now = exact(url, kept)
        try:
            parts = breakdown(url, rules_text)
        except OSError as error:  # a term that does not run alone must not lose the run's measurements
            print(f"breakdown: {error}", file=sys.stderr)
            parts = {}
        also_s = timed_queries(url, also or [])
        added = get(url, "/api/v1/query", query='count({__name__=~"llm_quota:.*"})')["data"]["result"]
        return {"users": users, "series": series, "samples": samples, "import_s": imported, "backfill_s": backfilled,
                # the mean, not the median: a rollup group computes its bucket at one evaluation in 5
                "groups": {name: statistics.fmean(values[1:] or values) for name, values in durations.items()},
                "raw_scan_s": statistics.median(scans), "one_read_s": statistics.median(reads),
                "rss_mib": rss_mib(process.pid), "exact": exact_now, "compaction_wait_s": quiet,
                "rule_series": int(float(added[0]["value"][1])) if added else 0, "parts_s": parts, "also_s": also_s,
                "rules_s": {name: statistics.fmean(values[1:] or values) for name, values in per_rule.items()}}
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
        shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--series", type=int, default=4, help="series per user, for each of tokens and cost")
    parser.add_argument("--hours", type=float, default=24.5, help="history backfilled")
    parser.add_argument("--raw-hours", type=float, help="raw counters for the last RAW_HOURS only, the rollups the "
                        "rules would have recorded synthesized for the rest (default: all raw)")
    parser.add_argument("--rules", type=Path, help="a rendered rule file (default: render the bench quota file)")
    parser.add_argument("--scrape-minutes", type=float, default=0, help="first scrape live counters of the same "
                        "users for this long, so the recent raw data is in Prometheus's head (as in production)")
    parser.add_argument("--before", action="store_true", help="the rules over the accounting counters, as they "
                        "were before the per-principal llm_quota_* counters")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--also", type=Path, help="a file of more PromQL expressions to time as instant queries, "
                        "separated by blank lines (candidate rules against the same data)")
    args = parser.parse_args()
    for binary in ("prometheus", "promtool"):
        if shutil.which(binary) is None:
            print(f"{binary} is missing: apt-get install -y prometheus", file=sys.stderr)
            return 1
    rules_text = args.rules.read_text() if args.rules else render_text(parse_quotas(QUOTAS, "bench quotas"))
    if args.before:
        rules_text = over_accounting(rules_text)
    also = [e.strip() for e in args.also.read_text().split("\n\n") if e.strip()] if args.also else []
    results = []
    with tempfile.TemporaryDirectory(prefix="otel-tokens-scale-") as tmp:
        for users in args.users:
            result = measure(users, args.series, args.hours, args.raw_hours or args.hours, rules_text, Path(tmp),
                             args.scrape_minutes, also)
            results.append(result)
            every = {g["name"]: duration_seconds(g.get("interval", "10s"))
                     for g in yaml.safe_load(rules_text)["groups"]}
            users_each = sum(v for k, v in result["groups"].items() if "user" in k)
            users_per_10s = sum(v * STEP / every.get(k, STEP) for k, v in result["groups"].items() if "user" in k)
            groups = ", ".join(f"{k} {v:.3f} s every {human_duration(every.get(k, STEP))}"
                               for k, v in sorted(result["groups"].items()))
            raw = result["raw_scan_s"]
            print(f"{users:>6} users x {args.series} series: {groups}; user groups {users_per_10s:.3f} s per 10 s "
                  f"({users_each:.3f} s if every group ran every 10 s) = {users_per_10s / raw:.3f} "
                  f"({users_each / raw:.3f}) of one raw scan ({raw:.3f} s over {args.raw_hours or args.hours:g} h of "
                  f"raw data); one read of every raw series {result['one_read_s']:.3f} s; "
                  f"rolling 24 h exact: {'yes' if result['exact'] else 'NO'}; "
                  f"RSS {result['rss_mib']:.0f} MiB; rule series {result['rule_series']}; "
                  f"{result['samples']:,} samples imported in {result['import_s']:.0f} s"
                  + (f", rollups backfilled in {result['backfill_s']:.0f} s" if result["backfill_s"] else "")
                  + "; the rolling 24 h's parts (tokens, instant queries): "
                  + ", ".join(f"{k} {v:.3f} s" for k, v in result["parts_s"].items()),
                  flush=True)
            for expr, seconds in result["also_s"].items():
                print(f"    {seconds:8.3f} s  also: {' '.join(expr.split())[:300]}", flush=True)
            for name, seconds in sorted(result["rules_s"].items(), key=lambda kv: -kv[1])[:15]:
                print(f"    {seconds:8.3f} s  {name}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
