"""Cost of the departments' month-to-date rule per evaluation, before and after its hourly buckets carried
their local month (issue 38), on a real Prometheus over 32 days of hourly buckets.

    python bench/department_month_cost.py [--departments 100 1000] [--zone America/New_York]

Per size: hourly buckets of D departments for the 32 days before now, one sample per hour as the rollup
group writes them, imported with `promtool tsdb create-blocks-from openmetrics` twice: labelled with the
local month of each hour's middle (as written now) and unlabelled (as versions before 38 wrote them). Timed
as instant queries (median of 5): the month rule as shipped before (UTC: each bucket's month computed at each
of the subquery's 768 steps, over the unlabelled buckets) and the rule as rendered now for `--zone` (over
the labelled ones; its join for buckets written before an upgrade finds none). Each result is checked
against the sums computed here. Ratios, not asserts. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import yaml  # noqa: E402
from _prometheus import binary, start  # noqa: E402

from otel_tokens.ops.rules import render_text  # noqa: E402
from otel_tokens.quota.calendar import python_calendar_id  # noqa: E402
from otel_tokens.quota.file import parse_quotas  # noqa: E402

HOUR = 3600
BUCKETS = "llm_quota:department_tokens:1h"
UNLABELLED = f"{BUCKETS}_unlabelled"  # the same buckets without their month, as versions before 38 wrote them
# the month rule as shipped before issue 38 (collector/rules/quotas.yml at e960463)
BEFORE = f"""sum by (department) (
  sum_over_time(
    (
      last_over_time({UNLABELLED}[1h] offset -59m)
      + on() group_left(month)
      (0 * count_values("month", year(vector(time() - 1800)) * 100 + month(vector(time() - 1800))))
    )[32d:1h]
  )
  and on(month)
  count_values("month", year(vector(time())) * 100 + month(vector(time())))
)"""


def month_rule(zone: str) -> str:
    quotas = parse_quotas({"timezone": zone, "departments": {"default": {"tokens": 1}}}, "bench quotas")
    rules = [r for g in yaml.safe_load(render_text(quotas))["groups"] for r in g["rules"]]
    return next(r["expr"] for r in rules if r.get("record") == "llm_quota:department_tokens:month")


def query(url: str, expr: str, at: float) -> list[dict]:
    qs = urllib.parse.urlencode({"query": expr, "time": repr(at)})
    with urllib.request.urlopen(f"{url}/api/v1/query?{qs}", timeout=600) as response:
        body = json.load(response)
    if body["status"] != "success":
        raise RuntimeError(body)
    return body["data"]["result"]


def timed(url: str, expr: str, at: float, label: str = "department") -> tuple[float, dict[str, float]]:
    """The median of 5 instant queries' seconds, and the result keyed by `label`."""
    times, result = [], []
    for _ in range(5):
        t = time.perf_counter()
        result = query(url, expr, at)
        times.append(time.perf_counter() - t)
    return statistics.median(times), {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


def write_history(path: Path, departments: int, end: int, zone: str) -> None:
    """One sample an hour per department, labelled with the local month of its middle as the rollup group
    writes them now, and unlabelled as it did before."""
    hours = range((end - 32 * 24 * HOUR) // HOUR, end // HOUR + 1)
    with path.open("w") as out:
        for name, labelled in ((UNLABELLED, False), (BUCKETS, True)):
            out.write(f"# TYPE {name} gauge\n")
            for d in range(departments):
                for h in hours:
                    month = f',month="{python_calendar_id("month", h * HOUR - HOUR // 2, zone)}"' if labelled else ""
                    out.write(f'{name}{{department="dept-{d:05d}"{month}}} {value(d, h)} {h * HOUR}\n')
        out.write("# EOF\n")


def value(department: int, hour: int) -> int:
    return (department % 7 + 1) * 10 + hour % 5


def truth(departments: int, end: int, zone: str) -> dict[str, float]:
    """Each department's month to date in the zone: the buckets of the hours whose middle is in its month."""
    now = python_calendar_id("month", end, zone)
    hours = [h for h in range((end - 32 * 24 * HOUR) // HOUR, end // HOUR + 1)
             if python_calendar_id("month", h * HOUR - HOUR // 2, zone) == now]
    return {f"dept-{d:05d}": float(sum(value(d, h) for h in hours)) for d in range(departments)}


def measure(departments: int, zone: str) -> dict[str, float]:
    end = (int(time.time()) // HOUR) * HOUR - HOUR + 600  # 10 minutes after an hour boundary, an hour back
    with tempfile.TemporaryDirectory(prefix="otel-tokens-month-bench-") as tmp:
        work = Path(tmp)
        write_history(work / "history.om", departments, end, zone)
        subprocess.run([binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(work / "history.om"),
                        str(work / "prom-data")], check=True, capture_output=True)
        url, process = start(work, retention="60d")
        try:
            shipped = month_rule(zone)
            rules = {  # name -> (expression, the zone its answer is exact in)
                "before (UTC)": (BEFORE, "UTC"),
                f"now, {zone}": (shipped, zone),
            }
            out = {}
            for name, (expr, exact_in) in rules.items():
                seconds, result = timed(url, expr, end)
                out[name] = seconds
                exact = f"  exact: {result == truth(departments, end, exact_in)}" if exact_in else ""
                print(f"  {departments:>5} departments  {name:<32} {seconds * 1000:8.1f} ms{exact}")
            return out
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--departments", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--zone", default="America/New_York")
    args = parser.parse_args()
    print(f"departments' month-to-date rule, instant query at 10 min past an hour "
          f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC machine time)")
    for departments in args.departments:
        measure(departments, args.zone)


if __name__ == "__main__":
    main()
