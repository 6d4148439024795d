"""The directory at 100,000 users: load time, memory, and what it adds to a call's attribution.

    python bench/directory_lookup.py [--users 100000]

Figures, in one run on this machine:
- load: seconds to read and check a CSV of N users (what the reload thread does, off the call path), and the
  memory the directory holds (tracemalloc, after the load);
- per call: `current_attribution()` inside a `usage_context(user_id=...)` as a request's middleware sets it,
  without a directory, with one where each call is a new context (a lookup and one dict), and with one where
  calls repeat the same context (the identity cache); reported in ns and as ratios to the first.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otel_tokens import names
from otel_tokens.attribution import context as attribution
from otel_tokens.attribution.directory import Directory, install


def per_call_ns(contexts: list[dict[str, str]], rounds: int = 5) -> float:
    """Best of `rounds` of current_attribution() under each context in turn (as a new request's context)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for values in contexts:
            token = attribution._attach_values(values)
            attribution.current_attribution()
            attribution._detach(token)
        best = min(best, (time.perf_counter_ns() - start) / len(contexts))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    departments = [f"dept-{i}" for i in range(200)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "directory.csv"
        path.write_text("user_id,department\n" + "".join(f"user-{i},{departments[i % 200]}\n"
                                                         for i in range(args.users)))
        tracemalloc.start()
        start = time.perf_counter()
        directory = Directory(path, (names.DEPARTMENT,))
        load = time.perf_counter() - start
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(directory.users) == args.users
        rng = random.Random(7)
        fresh = [{names.USER_ID: f"user-{rng.randrange(args.users)}"} for _ in range(args.calls)]
        same = [fresh[0]] * args.calls
        install(None)
        bare = per_call_ns(fresh)
        install(directory)
        looked_up = per_call_ns(fresh)
        cached = per_call_ns(same)
        assert attribution.current_attribution() == {}  # nothing left attached
        install(None)
    print(f"directory of {args.users:,} users: loaded in {load:.3f} s, holds {held / 2**20:.1f} MiB "
          f"({held / args.users:.0f} B a user)")
    print(f"current_attribution() per call: no directory {bare:.0f} ns; with it, a new context each call "
          f"{looked_up:.0f} ns (+{looked_up - bare:.0f} ns, x{looked_up / bare:.2f}); the same context "
          f"{cached:.0f} ns (x{cached / bare:.2f})")


if __name__ == "__main__":
    main()
