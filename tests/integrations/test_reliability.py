"""Reliability under faults and load: the app never notices when telemetry is broken, and nothing leaks.

1. Telemetry backend down or slow. The app exports with the SDK's standard pipeline (BatchSpanProcessor,
   PeriodicExportingMetricReader, OTLP/HTTP exporters with a 0.5 s timeout, exporting every 0.5 s so exports run
   while the app is measured) to a backend that refuses connections, accepts and never answers, or answers 503.
   Real openai SDK calls (plain and streaming) against the local OpenAI server and tiny transformers `generate`
   calls keep their median latency within noise of the same calls with a healthy backend in the same process,
   raise nothing, keep RSS bounded, and what is logged follows the exporter's batches (time), not the calls; our
   own logger says nothing per call. The providers shut down within a bounded time.

2. Soak. Many instrumented openai calls in one process: plain chat and text completions, streams exhausted (usage
   reported, with the caller's usage chunk, with the injected and hidden usage chunk, or counted with the tokenizer
   because the server sends none), streams closed early (`close()`, `with` left early) and streams abandoned
   mid-stream (`break`, `del`, left to GC). Afterwards RSS is back near its post-warm-up baseline, no
   `StreamProxy` is alive, every span started was ended, and `llm.token.usage` equals the ground truth from the
   server's own counts (for streams cut short: the full prompt in, the text received out).

   Size: `OTEL_TOKENS_SOAK_CALLS` (default 2000, which keeps `make test` fast). The full soak is
   `OTEL_TOKENS_SOAK_CALLS=200000 .venv/bin/python -m pytest -q -s tests/integrations/test_reliability.py`:
   the in-process
   soak (answers recorded once from the real server over HTTP, replayed through `httpx2.MockTransport`) then runs
   200 000 calls; the soak over real HTTP always runs at most 2000 (so both paths run by default).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import statistics
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest
import torch
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_tokens import TokenUsageInstrumentor, names, usage_context
from otel_tokens.config.settings import Settings
from otel_tokens.integrations.openai_stream import StreamProxy
from otel_tokens.recording.recorder import Recorder
from tests.support import openai_server
from tests.support import tiny_models as tm
from tests.support.openai_server import OpenAIServer, count_cl100k
from tests.support.reliability_app import (
    Exports,
    HangingBackend,
    LogCounter,
    OTLPBackend,
    Providers,
    RefusingBackend,
    Replay,
    SpanBalance,
    quiet_connection_resets,
    rss_mb,
)
from tests.support.telemetry import Telemetry

SOAK_CALLS = int(os.environ.get("OTEL_TOKENS_SOAK_CALLS", "2000"))
HTTP_SOAK_CALLS = min(SOAK_CALLS, 2000)
MODEL = "gpt-4"
USERS = (("alice", "support"), ("bob", "support"), ("carol", "research"), ("dave", "research"))
PROMPTS = (
    [{"role": "system", "content": "You answer from the knowledge base."},
     {"role": "user", "content": "How do I reset my password? 怎么重置密码？"}],
    [{"role": "user", "content": "Summarise the refund policy in one sentence."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "请总结一下本周的工单。"}],
)
TEXT_PROMPT = "Write one line about token budgets:"


@pytest.fixture(autouse=True)
def fast_local_server(monkeypatch):
    """TCP_NODELAY on the local OpenAI server: it writes headers and body separately, and Nagle plus delayed ACK
    otherwise add ~40 ms to every plain response, which would drown the latencies this module compares."""
    monkeypatch.setattr(openai_server._Handler, "disable_nagle_algorithm", True)


@contextlib.contextmanager
def instrumented(tracer_provider: TracerProvider, meter_provider: MeterProvider, **fields: Any) -> Iterator[Recorder]:
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            settings=Settings(**fields))
    try:
        recorder = instrumentor.recorder
        assert recorder is not None
        yield recorder
    finally:
        instrumentor.uninstrument()


@contextlib.contextmanager
def local_server(usage_mode: str, chunk_chars: int = 4) -> Iterator[OpenAIServer]:
    with OpenAIServer(usage_mode=usage_mode, chunk_chars=chunk_chars) as server, quiet_connection_resets(server):
        yield server


def http_client(server: OpenAIServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


# --- 1. telemetry backend down or slow ---------------------------------------------------------------------------

BLOCK = 10  # iterations per block; blocks alternate between the healthy and the broken backend
BLOCKS_A, BLOCKS_B = 5, 15  # phase A: 50 iterations, phase B: 150 (an iteration: a plain call, a stream, 1/2 generate)
WORKLOADS = ("openai plain", "openai stream", "transformers generate")
Timings = dict[str, list[float]]


@dataclass
class Comparison:
    condition: str
    timings: dict[str, Timings] = field(default_factory=dict)  # side (healthy | condition) -> workload -> seconds
    calls: Counter[str] = field(default_factory=Counter)  # phase -> calls made
    logs: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> logger tree -> records
    attempts: dict[str, int] = field(default_factory=dict)  # phase -> export attempts to the broken backend
    healthy_received: int = 0
    rss_before: float = 0.0
    rss_after: float = 0.0
    shutdown_s: float = 0.0
    shut_down: bool = False

    def medians(self, side: str) -> dict[str, float]:
        return {w: median_ms(values) for w, values in self.timings[side].items()}

    def report(self) -> None:
        def line(side: str) -> str:
            return ", ".join(f"{w} {m:.2f} ms" for w, m in self.medians(side).items())

        print(f"\n[{self.condition}] median latency, healthy backend: {line('healthy')}"
              f"\n[{self.condition}] median latency, {self.condition} backend: {line(self.condition)}"
              f"\n[{self.condition}] RSS {self.rss_before:.1f} -> {self.rss_after:.1f} MiB; log records "
              f"A ({self.calls['A']} calls): {self.logs['A']}, B ({self.calls['B']} calls): {self.logs['B']}; "
              f"export attempts to the {self.condition} backend A {self.attempts['A']}, B {self.attempts['B']}; "
              f"shutdown {self.shutdown_s:.2f} s")


def workload(client: openai.OpenAI, server: OpenAIServer, model: Any, iterations: int, timings: Timings | None,
             start: int = 0) -> int:
    """Instrumented calls as an app makes them; per-call latency goes to `timings`. Returns the calls made."""
    calls = 0
    ids = torch.tensor([[5, 6, 7, 8]])
    for i in range(start, start + iterations):
        user, department = USERS[i % len(USERS)]
        with usage_context(user_id=user, department=department):
            t0 = time.perf_counter()
            response = client.chat.completions.create(model=MODEL, messages=PROMPTS[i % len(PROMPTS)])
            t1 = time.perf_counter()
            stream = client.chat.completions.create(model=MODEL, messages=PROMPTS[i % len(PROMPTS)], stream=True)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
            t2 = time.perf_counter()
            calls += 2
            assert response.choices[0].message.content == server.reply and text == server.reply
            if timings is not None:
                timings["openai plain"].append(t1 - t0)
                timings["openai stream"].append(t2 - t1)
            if i % 2 == 0:
                t0 = time.perf_counter()
                out = model.generate(ids, max_new_tokens=3, do_sample=False, logits_processor=tm.forcing(4, [11]))
                t1 = time.perf_counter()
                calls += 1
                assert out.shape == (1, 7)
                if timings is not None:
                    timings["transformers generate"].append(t1 - t0)
    return calls


def compare(condition: str, backend: Any, server: OpenAIServer, model: Any) -> Comparison:
    """The same calls, in alternating blocks, with spans going to a healthy backend or to the broken one; metrics
    are exported to both all along. One instrumentation, one process, the same minutes: the VM's own drift hits
    both sides alike."""
    result = Comparison(condition, timings={side: {w: [] for w in WORKLOADS} for side in ("healthy", condition)})
    with OTLPBackend(200) as healthy_backend:
        healthy, broken = Exports(healthy_backend.endpoint), Exports(backend.endpoint)
        providers = Providers(healthy, broken)
        client = http_client(server)
        with LogCounter() as logs, instrumented(providers.tracer_provider, providers.meter_provider):
            for exports in (healthy, broken):  # warm-up: connections, tokenizers, log-once conditions
                providers.route_to(exports)
                workload(client, server, model, 8, None)
            gc.collect()
            result.rss_before = rss_mb()
            marks = [(logs.snapshot(), broken.attempts)]
            for block in range(BLOCKS_A + BLOCKS_B):
                side, exports = ("healthy", healthy) if block % 2 == 0 else (condition, broken)
                providers.route_to(exports)
                phase = "A" if block < BLOCKS_A else "B"
                result.calls[phase] += workload(client, server, model, BLOCK, result.timings[side], block * BLOCK)
                if block + 1 in (BLOCKS_A, BLOCKS_A + BLOCKS_B):
                    marks.append((logs.snapshot(), broken.attempts))
            gc.collect()
            result.rss_after = rss_mb()
        for phase, (before, after) in zip("AB", itertools.pairwise(marks), strict=True):
            result.logs[phase] = {root: after[0][root] - before[0][root] for root in LogCounter.ROOTS}
            result.attempts[phase] = after[1] - before[1]
        result.shut_down = providers.shutdown(timeout_s=10)
        result.shutdown_s = providers.shutdown_s or 0.0
        result.healthy_received = healthy_backend.received
    server.requests.clear()
    return result


@pytest.fixture(scope="module")
def gpt2():
    """The tiny model, run on one torch thread: on a small VM two intra-op threads make a 3 ms generate swing
    between 3 and 70 ms with whatever else runs, which is torch's noise, not ours."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield tm.gpt2()
    finally:
        torch.set_num_threads(threads)


BROKEN = {
    "refused": RefusingBackend,
    "hanging": HangingBackend,
    "503": lambda: OTLPBackend(503),
}


@pytest.mark.parametrize("condition", list(BROKEN))
def test_a_broken_telemetry_backend_never_reaches_the_app(condition, gpt2):
    with BROKEN[condition]() as backend, local_server("auto") as server:
        result = compare(condition, backend, server, gpt2)  # raises if any call raised
    result.report()
    assert result.healthy_received > 0, "the healthy backend received nothing: the comparison would mean nothing"
    if condition == "503":
        assert backend.received > 0  # the exporters did reach it, and were refused
    if condition == "hanging":
        assert backend.accepted > 0

    # Latency: the exporter's connects, timeouts and retries happen on its own threads, never on the call path.
    # Generous bound against noise (2-core VM): a broken backend may not add more than half the healthy median.
    good, bad = result.medians("healthy"), result.medians(condition)
    for w in WORKLOADS:
        assert bad[w] <= 1.5 * good[w] + 2.0, f"{w}: {bad[w]:.2f} ms with {condition}, {good[w]:.2f} ms healthy"

    # Exports to the broken backend kept running (and failing) while the calls were measured.
    assert result.attempts["B"] >= 1

    # Logging: our logger says nothing per call (what it says once was said in the warm-up); the SDK's exporters log
    # per failed export attempt, i.e. per batch or interval, which follows time, not the number of calls.
    assert result.logs["A"]["otel_tokens"] == 0 and result.logs["B"]["otel_tokens"] == 0
    for phase in "AB":
        records, attempts, calls = result.logs[phase]["opentelemetry"], result.attempts[phase], result.calls[phase]
        assert records <= 2 * attempts + 2, (phase, records, attempts)
        assert records * 4 <= calls, f"phase {phase}: {records} exporter log records for {calls} calls"

    # Memory: the span queue is bounded (BatchSpanProcessor drops past max_queue_size), nothing else piles up.
    assert result.rss_after - result.rss_before < 24, (result.rss_before, result.rss_after)

    # The providers shut down in bounded time even with the backend broken (exporter timeout 0.5 s).
    assert result.shut_down and result.shutdown_s < 10


# --- 2. soak ------------------------------------------------------------------------------------------------------

KINDS = 10  # see soak_call
SOAK_CHUNK_CHARS = 12  # ~8 chunks a stream: enough to cut streams short, few enough that 200 000 calls stay short


@dataclass
class Ground:
    """Ground truth of one soak: tokens per (user, token type, usage source), from the server's own counts."""

    server: OpenAIServer  # counts with the server's tokenizer rules; need not be running
    tokens: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    _counts: dict[int, int] = field(default_factory=dict)

    def add(self, user: str, source: str, input_tokens: int, output_tokens: int) -> None:
        self.tokens[(user, "input", source)] += input_tokens
        self.tokens[(user, "output", source)] += output_tokens

    def prompt(self, i: int) -> int:
        index = i % len(PROMPTS)
        if index not in self._counts:
            self._counts[index] = self.server.prompt_tokens(MODEL, PROMPTS[index])
        return self._counts[index]

    def reply(self) -> int:
        if -1 not in self._counts:
            self._counts[-1] = self.server.completion_tokens(MODEL, self.server.reply)
        return self._counts[-1]


class LiveProxies:
    """Weak references to every StreamProxy handed out; `alive` counts those not yet collected."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref[Any]] = {}
        self._next = 0
        self.handed_out = 0

    def track(self, stream: Any) -> Any:
        assert type(stream) is StreamProxy, type(stream)
        key, self._next = self._next, self._next + 1
        self._refs[key] = weakref.ref(stream, lambda _ref, key=key: self._refs.pop(key, None))
        self.handed_out += 1
        return stream

    @property
    def alive(self) -> int:
        return len(self._refs)


def _text(chunks: list[Any]) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def soak_call(i: int, never: openai.OpenAI, auto: openai.OpenAI, truth: Ground, live: LiveProxies) -> None:
    """Call number `i` of the soak; the kind cycles through plain calls and every way a stream ends."""
    kind = i % KINDS
    user, department = USERS[i % len(USERS)]
    messages = PROMPTS[i % len(PROMPTS)]
    take = 1 + (i // KINDS) % 4  # chunks read before a stream is cut short
    reply = truth.server.reply
    with usage_context(user_id=user, department=department, session_id=f"s-{i % 7}"):
        if kind == 0:  # plain, no usage from the server: counted with the tokenizer
            response = never.chat.completions.create(model=MODEL, messages=messages)
            assert response.choices[0].message.content == reply
            truth.add(user, "counted", truth.prompt(i), truth.reply())
        elif kind == 1:  # plain, usage reported
            response = auto.chat.completions.create(model=MODEL, messages=messages)
            assert response.usage is not None
            truth.add(user, "reported", truth.prompt(i), truth.reply())
        elif kind == 2:  # stream exhausted, the caller asked for the usage chunk: it sees it
            chunks = list(live.track(auto.chat.completions.create(
                model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True})))
            assert chunks[-1].usage is not None and not chunks[-1].choices and _text(chunks) == reply
            truth.add(user, "reported", truth.prompt(i), truth.reply())
        elif kind == 3:  # stream exhausted, the server sends no usage: counted
            chunks = list(live.track(never.chat.completions.create(model=MODEL, messages=messages, stream=True)))
            assert _text(chunks) == reply
            truth.add(user, "counted", truth.prompt(i), truth.reply())
        elif kind == 4:  # stream exhausted, usage chunk injected by us and hidden from the caller
            chunks = list(live.track(auto.chat.completions.create(model=MODEL, messages=messages, stream=True)))
            assert all(chunk.choices for chunk in chunks) and _text(chunks) == reply
            truth.add(user, "reported", truth.prompt(i), truth.reply())
        elif kind == 5:  # closed early: the usage chunk never arrives, the received text is counted, and called
            # estimated (the server may have generated more than was read)
            stream = live.track(auto.chat.completions.create(
                model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}))
            chunks = [next(stream) for _ in range(take)]
            stream.close()
            truth.add(user, "estimated", truth.prompt(i), count_cl100k(_text(chunks)))
        elif kind == 6:  # `with` block left early
            with live.track(never.chat.completions.create(model=MODEL, messages=messages, stream=True)) as stream:
                chunks = []
                for chunk in stream:
                    chunks.append(chunk)
                    if len(chunks) == take:
                        break
            truth.add(user, "estimated", truth.prompt(i), count_cl100k(_text(chunks)))
        elif kind in (7, 8):  # abandoned mid-stream: break, no close, dropped; recorded when collected
            client = never if kind == 7 else auto
            stream = live.track(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
            chunks = []
            for chunk in stream:
                chunks.append(chunk)
                if len(chunks) == take:
                    break
            if kind == 8:  # caught in a reference cycle: only the cyclic GC, some time later, frees it
                holder: list[Any] = [stream]
                holder.append(holder)
                del holder
            del stream
            truth.add(user, "estimated", truth.prompt(i), count_cl100k(_text(chunks)))
        else:  # text completion, counted
            completion = never.completions.create(model="gpt-3.5-turbo-instruct", prompt=TEXT_PROMPT)
            assert completion.choices[0].text == reply
            truth.add(user, "counted", count_cl100k(TEXT_PROMPT), truth.reply())


def gc_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def soak(never: openai.OpenAI, auto: openai.OpenAI, truth: Ground, calls: int, label: str,
         on_batch: Any = None) -> None:
    tel = Telemetry(InMemorySpanExporter(), InMemoryMetricReader())  # spans are only counted, never kept
    balance = SpanBalance()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(balance)
    meter_provider = MeterProvider(metric_readers=[tel.reader])
    live = LiveProxies()
    warmup = 3 * KINDS * len(USERS)
    with instrumented(tracer_provider, meter_provider, stream_include_usage=True) as recorder:
        for i in range(warmup):
            soak_call(i, never, auto, truth, live)
        tel.metrics()  # the first collection creates the SDK's metric storage: part of the baseline
        if on_batch:
            on_batch()
        objects_before, rss_before, threads_before = gc_objects(), rss_mb(), threading.active_count()
        start = time.perf_counter()
        for i in range(warmup, warmup + calls):
            soak_call(i, never, auto, truth, live)
            if on_batch and i % 200 == 0:
                on_batch()
        elapsed = time.perf_counter() - start
        if on_batch:
            on_batch()
        objects_after, rss_after = gc_objects(), rss_mb()
        leftover = [o for o in gc.get_objects() if type(o) is StreamProxy and o._self_state.recorder is recorder]
        totals = tel.token_totals(names.USER_ID, names.GEN_AI_TOKEN_TYPE, names.LLM_USAGE_SOURCE)
        requests = sum(p.value for p in tel.metrics()[names.METRIC_LLM_REQUESTS])
    print(f"\n[soak {label}] {calls} calls in {elapsed:.1f} s ({calls / elapsed:.0f} calls/s); "
          f"RSS {rss_before:.1f} -> {rss_after:.1f} MiB ({rss_after - rss_before:+.1f}); "
          f"gc objects {objects_before} -> {objects_after} ({objects_after - objects_before:+d}); "
          f"threads {threads_before} -> {threading.active_count()}; streams {live.handed_out}, alive {live.alive}, "
          f"left in gc {len(leftover)}; spans started {balance.started}, ended {balance.ended}")

    assert live.alive == 0 and not leftover, "stream proxies outlived their streams"
    assert balance.started == balance.ended == warmup + calls, (balance.started, balance.ended)
    assert requests == warmup + calls
    assert totals == dict(truth.tokens)
    # Nothing accumulates per call: a leak of one object per call would show as `calls` more objects, and RSS
    # returns near its post-warm-up baseline (allocator slack and the interpreter's own caches allowed for).
    assert objects_after - objects_before < 1000 + calls // 100, (objects_before, objects_after)
    assert rss_after - rss_before < 8 + calls / 20_000, (rss_before, rss_after)


def test_soak_over_real_http_leaks_nothing_and_counts_exactly():
    with local_server("never", SOAK_CHUNK_CHARS) as never_server, local_server("auto", SOAK_CHUNK_CHARS) as auto_server:
        def clear_recorded_requests() -> None:  # the test server keeps every request; that is not our memory
            never_server.requests.clear()
            auto_server.requests.clear()

        soak(http_client(never_server), http_client(auto_server), Ground(auto_server), HTTP_SOAK_CALLS, "real HTTP",
             on_batch=clear_recorded_requests)


def test_soak_in_process_leaks_nothing_and_counts_exactly():
    """The same soak with the server's recorded answers replayed in process, so it can run 200 000 calls."""
    replays = {}
    with local_server("never", SOAK_CHUNK_CHARS) as never_server, local_server("auto", SOAK_CHUNK_CHARS) as auto_server:
        for mode, server in (("never", never_server), ("auto", auto_server)):
            replay = replays[mode] = Replay()
            for messages in PROMPTS:
                replay.record(server.base_url, "/chat/completions", {"model": MODEL, "messages": messages})
                replay.record(server.base_url, "/chat/completions", {  # streams always ask: explicit or injected
                    "model": MODEL, "messages": messages, "stream": True, "stream_options": {"include_usage": True}})
            replay.record(server.base_url, "/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": TEXT_PROMPT})
        truth = Ground(auto_server)

    def client(mode: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://{mode}.llm.internal/v1", api_key="test", max_retries=0,
                             http_client=httpx2.Client(transport=replays[mode].transport()))

    soak(client("never"), client("auto"), truth, SOAK_CALLS, "in process")
    assert replays["never"].requests + replays["auto"].requests == SOAK_CALLS + 3 * KINDS * len(USERS)
