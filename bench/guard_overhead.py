"""Per-call cost of the quota guard, both modes.

Alert mode, for an allowed principal (the common case): the dictionary lookup in `AlertMode.decide`,
with 1000 principals over quota in the state. Target (issue 8): < 2 us. Also the guard-enabled vs
guard-disabled check the integrations do, for scale.
Budget mode: the added latency per call against a real local redis-server (bench/budget_overhead.py).
"""

from __future__ import annotations

import sys
import time
import timeit
from pathlib import Path

import results as bench_results  # bench/results.py (the script's folder is on sys.path)

from otel_tokens import names
from otel_tokens.config.settings import AlertSettings, GuardRule, GuardSettings
from otel_tokens.quota.alert.mode import AlertMode

RULES = (GuardRule("user", "reject", "critical"), GuardRule("department", "reject", "critical"),
         GuardRule("user", "downgrade", "warning", (("gpt-4o*", "gpt-4o-mini"),)))


def main() -> None:
    guard = AlertMode(GuardSettings(AlertSettings("http://unused", 1.0), rules=RULES))
    guard._over = {"users": {f"user-{i}": {"severity": "critical"} for i in range(1000)},
                   "departments": {f"dept-{i}": {"severity": "warning"} for i in range(50)}, "apps": {}}
    guard.healthy, guard.last_update = True, time.monotonic()  # as after its first refresh
    allowed = {names.USER_ID: "alice", names.DEPARTMENT: "support"}
    refused = {names.USER_ID: "user-7", names.DEPARTMENT: "support"}
    n = 200_000
    best = min(timeit.repeat(lambda: guard.decide("gpt-4o", allowed), number=n, repeat=5)) / n
    hit = min(timeit.repeat(lambda: guard.decide("gpt-4o", refused), number=n, repeat=5)) / n
    # with a rule for the app scope too: one more lookup, and Enforcement adds the app to the call's principals
    apps = AlertMode(GuardSettings(AlertSettings("http://unused", 1.0),
                                   rules=(*RULES, GuardRule("app", "reject", "critical"))))
    apps._over, apps.healthy, apps.last_update = guard._over, True, time.monotonic()
    with_app = min(timeit.repeat(lambda: apps.decide("gpt-4o", {**allowed, names.SERVICE_NAME: "kb-chat"}),
                                 number=n, repeat=5)) / n
    off = AlertMode(GuardSettings())
    disabled = min(timeit.repeat(lambda: off.alert.enabled, number=n, repeat=5)) / n
    print("quota guard per call")
    print(f"  allowed principal (1000 users over quota in the state): {best * 1e6:6.2f} us   (target < 2 us)")
    bench_results.record("alert mode decision, allowed principal", best * 1e6, "us", 2)
    print(f"  refused principal (decision built):                      {hit * 1e6:6.2f} us")
    print(f"  allowed, with an app rule (+ the app added to the call): {with_app * 1e6:6.2f} us")
    print(f"  guard disabled (the integrations' check):                {disabled * 1e6:6.2f} us")


if __name__ == "__main__":
    main()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import budget_overhead

    print()
    sys.exit(budget_overhead.main(sys.argv[1:]))
