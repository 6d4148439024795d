"""Cost of a month's statement (`otel-tokens report --month`) as users grow, on a real Prometheus.

    python bench/statement_scale.py [--users 100 1000] [--step-minutes 15] [--restarts 0.1] [--profile]

Per size: a whole calendar month (the one before the current) of counters for N users, each with 4
series (input and output tokens, input and output cost), one sample every --step-minutes, a share
--restarts of the users restarting once mid-month (a counter reset inside an hour), written as
OpenMetrics and imported with `promtool tsdb create-blocks-from openmetrics`. Then, in this process,
`build_statement` for that month (median of 3), checked against the generated truth (exact or not),
and beside it the naive query a dashboard would use for the same numbers,
`sum by (user_id) (increase(llm_token_usage_total[<month>]))` at the month's end: its seconds and
how far its total is off. Prometheus's RSS after the statements, and after the naive query.

Ratios, not asserts: nothing here fails on a slow machine. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _prometheus import binary  # noqa: E402
from _prometheus import start as start_prometheus  # noqa: E402

from otel_tokens.ops.report.period import month  # noqa: E402
from otel_tokens.ops.report.statement import build_statement  # noqa: E402
from otel_tokens.prometheus_api import Prometheus  # noqa: E402

PRICE = {"input": 2.5e-6, "output": 10e-6}


def _previous_month(now: float) -> str:
    d = datetime.fromtimestamp(now, timezone.utc)
    return f"{d.year - 1}-12" if d.month == 1 else f"{d.year}-{d.month - 1:02d}"


def write_history(path: Path, users: int, start: int, end: int, step: int, restarts: float,
                  rng: random.Random) -> float:
    """The month's counters as OpenMetrics (samples from one step before start to end); returns the
    true number of tokens added in (start, end]."""
    times = list(range(start - step, end + 1, step))
    truth = 0
    lines: dict[str, list[str]] = {"llm_token_usage": [], "llm_cost": []}
    for u in range(users):
        restart = times[rng.randrange(len(times) // 4, 3 * len(times) // 4)] if rng.random() < restarts else None
        for token_type, per in (("input", 40), ("output", 15)):
            labels = (f'department="d{u % 10}",gen_ai_request_model="gpt-4o",gen_ai_token_type="{token_type}",'
                      f'instance="app:{u % 7}",job="app",user_id="user{u:05d}"')
            tokens = 0
            tokens_out: list[str] = []
            cost_out: list[str] = []
            for t in times:
                if t == restart:
                    tokens = 0
                added = rng.randrange(per)
                tokens += added
                if t > start:
                    truth += added
                tokens_out.append(f"llm_token_usage_total{{{labels}}} {tokens} {t}")
                cost_out.append(f'llm_cost_total{{currency="USD",{labels}}} {tokens * PRICE[token_type]!r} {t}')
            lines["llm_token_usage"] += tokens_out
            lines["llm_cost"] += cost_out
    with path.open("w") as f:
        for metric, body in lines.items():
            f.write(f"# TYPE {metric} counter\n")
            f.write("\n".join(body) + "\n")
        f.write("# EOF\n")
    return truth


def measure(users: int, step_minutes: int, restarts: float, profile: bool = False) -> dict[str, float | int | bool]:
    promtool = binary("promtool")
    now = time.time()
    period = month(_previous_month(now))
    start, end = int(period.start), int(period.end)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.monotonic()
        truth = write_history(tmp / "h.om", users, start, end, step_minutes * 60, restarts, random.Random(users))
        subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(tmp / "h.om"),
                        str(tmp / "prom-data")], check=True, capture_output=True)
        (tmp / "h.om").unlink()
        prepared = time.monotonic() - t0
        url, process = start_prometheus(tmp, retention="400d")
        try:
            prom = Prometheus(url)
            seconds = []
            for _ in range(3):
                t = time.perf_counter()
                s = build_statement(prom, period, now)
                seconds.append(time.perf_counter() - t)
            if profile:
                import cProfile
                import pstats

                profiler = cProfile.Profile()
                profiler.runcall(build_statement, prom, period, now)
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(18)
            rss_statement = _rss(url)
            naive = []
            for _ in range(3):
                t = time.perf_counter()
                result = prom.instant(f"sum by (user_id) (increase(llm_token_usage_total[{end - start}s]))", end)
                naive.append(time.perf_counter() - t)
            naive_total = sum(value for _, value in result)
            rss = _rss(url)
        finally:
            process.terminate()
            process.wait(timeout=60)
    return {"users": users, "series": users * 4, "samples_per_series": (end - start) // (step_minutes * 60) + 2,
            "prepare_s": round(prepared, 1), "statement_s": round(statistics.median(seconds), 3),
            "exact": s.totals.total_tokens == truth, "rows": len(s.rows["user"]), "lines": len(s.lines),
            "naive_increase_s": round(statistics.median(naive), 3),
            "naive_error_pct": round(100 * (naive_total / truth - 1), 3),
            "rss_after_statement_mib": round(rss_statement / 2**20), "rss_after_naive_mib": round(rss / 2**20)}


def _rss(url: str) -> float:
    """Prometheus's resident memory, from its own /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics") as response:
        return next(float(line.split()[1]) for line in response.read().decode().splitlines()
                    if line.startswith("process_resident_memory_bytes "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--step-minutes", type=int, default=15)
    parser.add_argument("--restarts", type=float, default=0.1)
    parser.add_argument("--profile", action="store_true", help="also print where one statement spends its time")
    args = parser.parse_args()
    for users in args.users:
        print(measure(users, args.step_minutes, args.restarts, args.profile), flush=True)


if __name__ == "__main__":
    main()
