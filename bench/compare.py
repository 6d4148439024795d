"""`make bench`'s last step: today's numbers (BENCH_RESULTS) beside the last committed ones (bench/baseline.json),
each flagged when it is more than 20 % worse. `--update` makes today's the baseline (commit it with the change that
moved them, and quote both in the issue's closing note).

Some of these numbers are noisy on a shared machine (the openai per-call overhead moves by tens of microseconds
between identical runs: its own A/A control line says by how much); a flag is a prompt to rerun and compare
alternating old and new code (docs/benchmarks.md), not a verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BASELINE = Path(__file__).resolve().parent / "baseline.json"
WORSE = 1.20  # flagged above 120 % of the baseline
FLOOR = 1.0  # differences under this many units are never flagged (sub-microsecond timings are noise)


def compare(today: dict, baseline: dict) -> tuple[list[str], int]:
    lines = [f"{'bench':<46} {'baseline':>12} {'today':>12} {'change':>8}  target"]
    flagged = 0
    for name in sorted(set(today) | set(baseline)):
        now, then = today.get(name), baseline.get(name)
        unit = (now or then)["unit"]
        value = f"{now['value']:.2f} {unit}" if now else "not run"
        before = f"{then['value']:.2f} {unit}" if then else "new"
        change, flag = "", ""
        if now and then and then["value"]:
            ratio = now["value"] / then["value"]
            change = f"{(ratio - 1) * 100:+.0f} %"
            if ratio > WORSE and now["value"] - then["value"] > FLOOR:
                flag, flagged = "  REGRESSION (over 20 % worse)", flagged + 1
        target = (now or then).get("target")
        lines.append(f"{name:<46} {before:>12} {value:>12} {change:>8}  {target if target else ''}{flag}")
    return lines, flagged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="today's results (the BENCH_RESULTS file)")
    parser.add_argument("--update", action="store_true", help="write today's numbers as the baseline")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a number is flagged")
    args = parser.parse_args()
    today = json.loads(args.results.read_text()) if args.results.exists() else {}
    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    lines, flagged = compare(today, baseline)
    print("\n".join(["", "make bench: today beside the committed baseline (bench/baseline.json)", *lines]))
    if flagged:
        print(f"{flagged} number(s) over 20 % worse than the baseline: rerun, then compare old and new code "
              "alternating (docs/benchmarks.md)")
    if args.update:
        BASELINE.write_text(json.dumps({**baseline, **today}, indent=1, sort_keys=True) + "\n")
        print(f"baseline updated: {BASELINE}")
    return 1 if flagged and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
