"""Where the user rules' cost goes: every rule of the users' group, and each part of
`llm_quota:user_tokens:24h`, timed alone as an instant query, against the same steady state as
bench/quota_rules_scale.py (counters imported, rollups backfilled or synthesized). Prints medians
of 5 queries next to one raw scan.

    python bench/quota_rules_parts.py [--users 100] [--raw-hours 24.5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quota_rules_scale as scale

from otel_tokens.ops.backfill import backfill
from otel_tokens.ops.rules import render, render_text
from otel_tokens.quota.file import parse_quotas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--raw-hours", type=float, default=24.5)
    parser.add_argument("--also", type=Path, help="a file of more PromQL expressions to time, one a line")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="otel-tokens-parts-") as tmp:
        work = Path(tmp)
        end = int(time.time()) // scale.STEP * scale.STEP
        start = end - int(24.5 * 3600)
        data = work / "data"
        data.mkdir()
        raw_from = max(start, (end - int(args.raw_hours * 3600)) // scale.BUCKET * scale.BUCKET)
        scale.write_openmetrics(work / "raw.om", args.users, 4, start, end, raw_from)
        subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(work / "raw.om"), str(data)],
                       check=True, capture_output=True)
        quotas = parse_quotas(scale.QUOTAS, "bench quotas")
        rules = work / "quotas.yml"
        rules.write_text(render_text(quotas))
        port = scale.free_port()
        url = f"http://127.0.0.1:{port}"
        (work / "prometheus.yml").write_text(f"global: {{evaluation_interval: 10s}}\nrule_files: ['{rules}']\n")
        command = ["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={data}",
                   f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=30d"]
        with (work / "prometheus.log").open("w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                scale.wait_ready(url, process, log.name)
                backfill(rules, url, raw_from, end, work / "blocks")
            finally:
                process.terminate()
                process.wait(timeout=120)
            for block in (work / "blocks").iterdir():
                shutil.move(str(block), data / block.name)
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                scale.wait_ready(url, process, log.name)
                groups = {g["name"]: g["rules"] for g in render(quotas)["groups"]}
                expr = next(r["expr"] for r in groups["llm_quota_users"]
                            if r.get("record") == "llm_quota:user_tokens:24h")
                parts = expr[len("sum by (user_id) (\n"):-2].split("\nor ")

                def timed(query: str) -> float:
                    runs = []
                    for _ in range(5):
                        t = time.perf_counter()
                        scale.get(url, "/api/v1/query", query=query)
                        runs.append(time.perf_counter() - t)
                    return statistics.median(runs)

                print(f"{args.users} users x 4 series, steady state; seconds per instant query (median of 5)")
                print(f"  one raw scan ({args.raw_hours:g} h of raw data)  {timed(scale.RAW_SCAN):.3f}")
                print(f"  empty query (the HTTP round trip)     {timed('vector(1)'):.3f}")
                for name, rules_ in groups.items():
                    for rule in rules_:
                        what = rule.get("record") or f"{rule['alert']} ({rule['labels']['severity']})"
                        print(f"  {name} {what:<40}{timed(rule['expr']):.3f}")
                for part in parts:
                    name = part.rsplit('"part", "', 1)[1].split('"')[0]
                    print(f"    llm_quota:user_tokens:24h part {name:<12}{timed(part):.3f}")
                for line in (args.also.read_text().splitlines() if args.also else []):
                    if line.strip():
                        print(f"  {timed(line):.3f}  {line}")
            finally:
                process.terminate()
                process.wait(timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
