"""python -m grafana.generator [--check]: write grafana/dashboards/*.json, or fail listing the files that differ."""

import argparse
import sys

from grafana.generator import apps, latency, overview, users
from grafana.generator.shell import ROOT, to_json

DASHBOARDS = ROOT / "grafana" / "dashboards"
MODULES = (overview, users, apps, latency)


def rendered() -> dict[str, str]:
    """file name -> the JSON the generator writes for it."""
    return {module.FILE: to_json(module.build()) for module in MODULES}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.generator", description=__doc__)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a committed file differs")
    args = parser.parse_args()
    stale = []
    for name, text in rendered().items():
        path = DASHBOARDS / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run `make dashboards`", file=sys.stderr)
        return 1
    print(("rewrote " if stale else "unchanged: ") + ", ".join(stale or sorted(rendered())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
