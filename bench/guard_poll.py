"""What one in-app poll of `otel-tokens guard` costs the app, with a forged-size state (100k principals
over quota): bytes received and CPU time of `AlertMode.refresh`, for a full answer (capped), an unchanged
state (304) and one change (`?since=`). Ratios against the full answer, one run; not a timed assert."""

from __future__ import annotations

import threading
import time
import urllib.request

import results as bench_results  # bench/results.py (the script's folder is on sys.path)

from otel_tokens.config.settings import AlertSettings, GuardRule, GuardSettings
from otel_tokens.ops.alert_endpoint import serve
from otel_tokens.quota.alert.mode import AlertMode
from otel_tokens.quota.alert.state import AlertState

TOKEN = "bench-guard-token-0123456789abcdef"
ENTRY = {"severity": "critical", "window": "24h", "quota": "tokens", "usage": "1.2k tokens", "limit": "1k tokens",
         "percent": "120%"}


def _cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    state = AlertState()
    state.apply([(("user", f"user-{i}", "tokens", "24h", "critical"), dict(ENTRY)) for i in range(100_000)])
    server = serve("127.0.0.1", 0, state=state, token=TOKEN)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/state"
    try:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        full_bytes = len(urllib.request.urlopen(request, timeout=30).read())
        guard = AlertMode(GuardSettings(AlertSettings(url, 2.0, token=TOKEN), rules=(GuardRule("user", "reject"),)))
        full = min(_cpu(lambda: (setattr(guard, "_tag", ""), guard.refresh())) for _ in range(3))
        unchanged = min(_cpu(guard.refresh) for _ in range(5))
        deltas = []
        for i in range(5):
            state.apply([(("user", f"new-{i}", "tokens", "24h", "critical"), dict(ENTRY))])
            deltas.append(_cpu(guard.refresh))
        one = min(deltas)
        print("guard endpoint poll, 100k principals in the state (answer capped at 10,000 per section)")
        print(f"  full answer:     {full_bytes / 1e6:6.2f} MB, refresh CPU {full * 1e3:7.2f} ms")
        bench_results.record("guard poll, 100k principals: full refresh CPU", full * 1e3, "ms")
        print(f"  unchanged (304): refresh CPU {unchanged * 1e3:7.3f} ms   ({full / max(unchanged, 1e-9):6.0f}x less)")
        print(f"  one change:      refresh CPU {one * 1e3:7.3f} ms   ({full / max(one, 1e-9):6.0f}x less)")
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
