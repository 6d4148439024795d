"""A scrape target for bench/quota_rules_scale.py: the same users x series as the imported history,
as new processes (instance `live:N`) whose counters grow by 0-3 tokens per scrape, so that the recent
raw data the rules read every evaluation lies in Prometheus's head, as it does in production, and
not only in imported blocks. Each process also serves the per-principal counters the quota rules read
(llm_quota_tokens_total, llm_quota_cost_total: its series of the user summed), as the package does."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


class LiveCounters:
    def __init__(self, users: int, series: int, checked: int, seed: int = 11) -> None:
        self.rng = np.random.default_rng(seed)
        self.series = series
        self.labels = [
            (f'{{user_id="user-{u}",department="dept-{u % 20}",gen_ai_request_model="model-{s // 2}",'
             f'gen_ai_token_type="{("input", "output")[s % 2]}",job="app",instance="live:{s % 2}"}}')
            for u in range(users) for s in range(series)]
        self.processes = 2
        self.principal_labels = [f'{{user_id="user-{u}",department="dept-{u % 20}",job="app",instance="live:{p}"}}'
                                 for u in range(users) for p in range(self.processes)]
        # series index -> its principal's row (user, process): the sums the per-principal counters serve
        self.principal_of = np.array([u * self.processes + s % self.processes for u in range(users)
                                      for s in range(series)])
        self.tokens = np.zeros(len(self.labels), dtype=np.int64)
        self.cost = np.zeros(len(self.labels), dtype=np.int64)  # in 1e-5 units
        self.checked = checked
        self.usage: dict[int, list[tuple[float, int]]] = {u: [] for u in range(checked)}
        self.lock = threading.Lock()
        self.frozen = False  # serve the same values (to check the rules' result against a still truth)

    def scrape(self) -> bytes:
        with self.lock:
            now = time.time()
            grow = self.rng.integers(0, 4 if not self.frozen else 1, size=len(self.labels))
            self.tokens += grow
            self.cost += self.rng.integers(0, 4 if not self.frozen else 1, size=len(self.labels))
            for u in self.usage:
                self.usage[u].append((now, int(grow[u * self.series:(u + 1) * self.series].sum())))
            lines = ["# TYPE llm_token_usage_total counter\n"]
            lines += [f"llm_token_usage_total{lab} {v}\n" for lab, v in zip(self.labels, self.tokens.tolist(),
                                                                              strict=True)]
            lines.append("# TYPE llm_cost_total counter\n")
            lines += [f"llm_cost_total{lab} {v * 0.00001:.6g}\n" for lab, v in zip(self.labels, self.cost.tolist(),
                                                                                     strict=True)]
            rows = len(self.principal_labels)
            tokens = np.bincount(self.principal_of, weights=self.tokens, minlength=rows).astype(np.int64)
            cost = np.bincount(self.principal_of, weights=self.cost, minlength=rows).astype(np.int64)
            lines.append("# TYPE llm_quota_tokens_total counter\n")
            lines += [f"llm_quota_tokens_total{lab} {v}\n" for lab, v in zip(self.principal_labels, tokens.tolist(),
                                                                               strict=True)]
            lines.append("# TYPE llm_quota_cost_total counter\n")
            lines += [f'llm_quota_cost_total{lab[:-1]},currency="USD"}} {v * 0.00001:.6g}\n'
                      for lab, v in zip(self.principal_labels, cost.tolist(), strict=True)]
            return "".join(lines).encode()

    def serve(self) -> ThreadingHTTPServer:
        counters = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = counters.scrape()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server
