"""The headline numbers of `make bench`, so a regression cannot pass unseen: each bench script records its own
here (into the JSON file `BENCH_RESULTS` names; nothing when unset, so a script run by hand prints as before), and
bench/compare.py prints them beside the last committed ones (bench/baseline.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def record(name: str, value: float, unit: str, target: float | None = None) -> None:
    """One number, lower is better (a cost), with the target it is held to where there is one."""
    path = os.environ.get("BENCH_RESULTS")
    if not path:
        return
    file = Path(path)
    results = json.loads(file.read_text()) if file.exists() else {}
    results[name] = {"value": round(float(value), 3), "unit": unit, **({"target": target} if target else {})}
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
