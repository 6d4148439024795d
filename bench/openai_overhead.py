"""Per-call overhead of instrumenting the openai SDK: otel-tokens against its peers, one arm per venv.

    python bench/openai_overhead.py --arm {ours,openllmetry,otel-v2} [--json OUT]
    python bench/openai_overhead.py --table OUT...          (one table from several arms' JSON)

Each arm runs in its own virtual environment (bench/peers.sh makes the peers' ones; bench/run_openai_bench.sh
runs all three) with the same openai and opentelemetry-sdk. Requests never leave the process: the client's
`httpx2.Client` has an `httpx2.MockTransport` returning canned chat.completions JSON, and SSE streams of
N=50 content chunks plus a final usage chunk.

Figures, per arm, bare and instrumented measured in the same process:
- overhead per non-streaming call (us): instrumented minus bare per-call time;
- overhead per stream chunk (us): (instrumented stream total - bare stream total) / chunks delivered (51:
  50 content chunks + the usage chunk), so it includes the per-stream fixed cost spread over the chunks;
- ratio instrumented / bare for each.
Timing: blocks of calls, `tracer_provider.force_flush()` between blocks, the minimum block per-call time (as
timeit does: this VM's noise only adds). When the arm's `uninstrument()` really restores the original
`Completions.create` (checked first), bare and instrumented blocks alternate round by round, with a second
bare block per round as the A/A control (its difference from the first is the noise floor); otherwise all
bare blocks run first, then `instrument()`, then the instrumented ones (the table says which).

A separate short check run (a child process, in-memory exporters, not timed) records what each arm put on
its spans and metrics: token usage for a stream with a usage chunk, and output tokens for a stream WITHOUT
one (the mock honours `stream_options.include_usage` there, so an instrumentation that asks for usage gets it).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import results as bench_results  # bench/results.py (the script's folder is on sys.path)

HERE = Path(__file__).resolve().parent
ARMS = ("ours", "openllmetry", "otel-v2")
MODEL = "gpt-4o-mini"  # asked for; the responses name the snapshot, as the API does
RESPONSE_MODEL = "gpt-4o-mini-2024-07-18"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say fifty words."}]
CONTENT_CHUNKS = 50
PROMPT_TOKENS = 21
COMPLETION_TOKENS = CONTENT_CHUNKS
BASE_URL = "http://bench.local/v1"

# Per arm: the instrumentor's import, and the distributions whose versions the table shows.
ARM_PACKAGES = {
    "ours": ["otel-tokens", "tiktoken"],
    "openllmetry": ["opentelemetry-instrumentation-openai", "opentelemetry-semantic-conventions-ai"],
    "otel-v2": ["opentelemetry-instrumentation-openai-v2", "opentelemetry-util-genai", "httpx"],
}
COMMON_PACKAGES = ["openai", "httpx2", "opentelemetry-sdk", "opentelemetry-instrumentation"]


# --------------------------------------------------------------------------------------------------
# canned responses and the in-process transport


def _completion_json() -> bytes:
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": RESPONSE_MODEL,
        "system_fingerprint": "fp_bench", "service_tier": "default",
        "choices": [{
            "index": 0, "finish_reason": "stop", "logprobs": None,
            "message": {"role": "assistant", "content": " ".join(f"w{i}" for i in range(CONTENT_CHUNKS)),
                        "refusal": None, "annotations": []},
        }],
        "usage": _usage(),
    }).encode()


def _usage() -> dict[str, Any]:
    return {
        "prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def _chunk(**fields: Any) -> bytes:
    return b"data: " + json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": RESPONSE_MODEL, "system_fingerprint": "fp_bench", "service_tier": "default", **fields,
    }).encode() + b"\n\n"


def _sse_events(include_usage: bool) -> list[bytes]:
    """One SSE event per chunk (as the network delivers them): 50 content chunks, the last one with
    finish_reason, then the usage chunk (choices empty) when asked for, then [DONE]."""
    events = []
    for i in range(CONTENT_CHUNKS):
        delta: dict[str, Any] = {"content": f"w{i} " if i < CONTENT_CHUNKS - 1 else f"w{i}"}
        if i == 0:
            delta = {"role": "assistant", "refusal": None, **delta}
        choices = [{"index": 0, "delta": delta, "logprobs": None,
                    "finish_reason": "stop" if i == CONTENT_CHUNKS - 1 else None}]
        # With include_usage the API sends "usage": null on every chunk before the usage one.
        events.append(_chunk(choices=choices, usage=None) if include_usage else _chunk(choices=choices))
    if include_usage:
        events.append(_chunk(choices=[], usage=_usage()))
    events.append(b"data: [DONE]\n\n")
    return events


def _transport(kind: str) -> Any:
    """`json`: always the completion; `sse`: always the stream with its usage chunk; `honest`: what the
    request asks for (stream or not, usage chunk only when stream_options.include_usage), for the check."""
    import httpx2

    class Events(httpx2.SyncByteStream):
        def __init__(self, events: list[bytes]) -> None:
            self.events = events

        def __iter__(self) -> Iterator[bytes]:
            return iter(self.events)

    json_headers = {"content-type": "application/json", "x-request-id": "req_bench"}
    sse_headers = {"content-type": "text/event-stream", "x-request-id": "req_bench"}
    completion = _completion_json()
    with_usage, without_usage = _sse_events(True), _sse_events(False)

    if kind == "json":
        def handler(request: Any) -> Any:
            return httpx2.Response(200, headers=json_headers, content=completion)
    elif kind == "sse":
        def handler(request: Any) -> Any:
            return httpx2.Response(200, headers=sse_headers, stream=Events(with_usage))
    else:
        def handler(request: Any) -> Any:
            body = json.loads(request.content)
            handler.requests.append(body)  # type: ignore[attr-defined]
            if not body.get("stream"):
                return httpx2.Response(200, headers=json_headers, content=completion)
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return httpx2.Response(200, headers=sse_headers, stream=Events(with_usage if usage else without_usage))

        handler.requests = []  # type: ignore[attr-defined]
    return httpx2.MockTransport(handler)


def _client(transport: Any) -> Any:
    import httpx2
    import openai

    # openai 3.x takes an httpx2.Client (or a legacy httpx.Client) as http_client.
    return openai.OpenAI(api_key="x", base_url=BASE_URL, max_retries=0, http_client=httpx2.Client(transport=transport))


def _call(client: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=MESSAGES)


def _stream(client: Any, include_usage: bool = True) -> int:
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = 0
    for _ in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **extra):
        chunks += 1
    return chunks


# --------------------------------------------------------------------------------------------------
# the arms


def _instrumentor(arm: str) -> Any:
    if arm == "ours":
        from otel_tokens import TokenUsageInstrumentor

        return TokenUsageInstrumentor()
    if arm == "openllmetry":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor

        return OpenAIInstrumentor()
    if arm == "otel-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as OpenAIV2Instrumentor

        return OpenAIV2Instrumentor()
    raise ValueError(arm)


def _drain(instrumentor: Any) -> None:
    """Work ours defers off the call path (queued metric points) is done between blocks, like the spans."""
    accounting = getattr(getattr(instrumentor, "recorder", None), "accounting", None)
    if accounting is not None and hasattr(accounting, "drain"):
        accounting.drain()


def _create_attr() -> Any:
    from openai.resources.chat.completions import Completions

    return Completions.__dict__["create"]


def _versions(arm: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in COMMON_PACKAGES + ARM_PACKAGES[arm]:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


# --------------------------------------------------------------------------------------------------
# the check run (child process): spans and metrics in memory


def _token_attributes(attributes: Any) -> dict[str, Any]:
    return {k: v for k, v in (attributes or {}).items() if "token" in k and isinstance(v, int | float)}


def _output_tokens(attributes: dict[str, Any]) -> Any:
    for key, value in attributes.items():
        if ("output_tokens" in key or "completion_tokens" in key) and "reasoning" not in key and value > 0:
            return value
    return None


def _metric_tokens(reader: Any) -> dict[str, float]:
    """Token totals per token type from every token-usage-like histogram/counter (delta temporality)."""
    totals: dict[str, float] = {}
    data = reader.get_metrics_data()
    for resource_metrics in getattr(data, "resource_metrics", None) or []:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if "token" not in metric.name or "time" in metric.name:  # not time_to_first_token
                    continue
                for point in metric.data.data_points:
                    kind = point.attributes.get("gen_ai.token.type") or point.attributes.get("llm.token.type") or "?"
                    value = getattr(point, "sum", None)
                    if value is None:
                        value = getattr(point, "value", 0)
                    totals[f"{metric.name}[{kind}]"] = totals.get(f"{metric.name}[{kind}]", 0) + value
    return totals


def check(arm: str) -> dict[str, Any]:
    from opentelemetry.sdk.metrics import (
        Counter,
        Histogram,
        MeterProvider,
        ObservableCounter,
        ObservableUpDownCounter,
        UpDownCounter,
    )
    from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    logged: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(f"{record.levelname} {record.name}: {record.getMessage()}"[:300])

    logging.getLogger().addHandler(Keep(logging.WARNING))

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    delta = AggregationTemporality.DELTA
    reader = InMemoryMetricReader(preferred_temporality={
        kind: delta for kind in (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter)})
    meter_provider = MeterProvider(metric_readers=[reader])

    transport = _transport("honest")
    client = _client(transport)
    original = _create_attr()
    instrumentor = _instrumentor(arm)
    result: dict[str, Any] = {"versions": _versions(arm)}
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    result["wraps_create"] = _create_attr() is not original

    def scenario(name: str, fn: Callable[[], Any]) -> None:
        exporter.clear()
        _metric_tokens(reader)  # resets the delta
        transport.handler.requests.clear()
        error = None
        try:
            fn()
        except Exception as exc:  # the check reports, the bench goes on
            error = f"{type(exc).__name__}: {exc}"[:300]
        _drain(instrumentor)
        spans = exporter.get_finished_spans()
        tokens = {}
        for span in spans:
            tokens.update(_token_attributes(span.attributes))
        metric_tokens = _metric_tokens(reader)
        body = transport.handler.requests[0] if transport.handler.requests else {}
        result[name] = {
            "error": error,
            "spans": [span.name for span in spans],
            "span_tokens": tokens,
            "span_output_tokens": _output_tokens(tokens),
            "metric_tokens": metric_tokens,
            # the semconv histogram all three emit; any other token metric when it is absent
            "metric_output_tokens": metric_tokens.get("gen_ai.client.token.usage[output]") or sum(
                v for k, v in metric_tokens.items() if k.endswith(("[output]", "[completion]"))) or None,
            "request_include_usage": bool((body.get("stream_options") or {}).get("include_usage")),
            "span_attributes": {k: v if isinstance(v, int | float | str | bool) else list(v)
                                for span in spans[:1] for k, v in (span.attributes or {}).items()},
        }

    scenario("call", lambda: _call(client))
    scenario("stream_usage", lambda: _stream(client, include_usage=True))
    scenario("stream_no_usage", lambda: _stream(client, include_usage=False))

    # uninstrument: restores the original, records nothing after, and instrument() works again
    exporter.clear()
    try:
        instrumentor.uninstrument()
        restored = _create_attr() is original
        _call(client)
        silent = not exporter.get_finished_spans()
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
        _call(client)
        again = bool(exporter.get_finished_spans())
        instrumentor.uninstrument()
        result["uninstrument"] = {"restores_create": restored, "no_spans_after": silent,
                                  "reinstrument_records": again, "error": None}
    except Exception as exc:
        result["uninstrument"] = {"restores_create": False, "no_spans_after": False, "reinstrument_records": False,
                                  "error": f"{type(exc).__name__}: {exc}"[:300]}
    u = result["uninstrument"]
    # Alternation needs only that uninstrument() gives the bare method back and instrument() wraps it again.
    result["uninstrument_ok"] = bool(u["restores_create"] and u["no_spans_after"])
    result["log"] = logged[:12]
    return result


def _run_check(arm: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--arm", arm, "--check-only"],
                          capture_output=True, text=True, timeout=600, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"failed": f"check run exited {proc.returncode}: " + (proc.stderr or proc.stdout)[-1500:]}


# --------------------------------------------------------------------------------------------------
# the timed run


def _block(fn: Callable[[], Any], n: int, warmup: int, between: Callable[[], None]) -> float:
    for _ in range(warmup):
        fn()
    between()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n
    finally:
        gc.enable()


def bench(arm: str, rounds: int, calls: int, streams: int, alternate: bool) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from _sdk import providers

    tracer_provider, meter_provider = providers()
    plain_client, stream_client = _client(_transport("json")), _client(_transport("sse"))
    chunks = _stream(stream_client)
    original = _create_attr()
    instrumentor = _instrumentor(arm)

    def between() -> None:
        _drain(instrumentor)
        tracer_provider.force_flush()

    def call() -> None:
        _call(plain_client)

    def stream() -> None:
        _stream(stream_client)

    times: dict[str, dict[str, list[float]]] = {s: {"call": [], "stream": []} for s in ("bare", "control", "inst")}

    def measure(series: str) -> None:
        # Blocks stay under the batch span processor's 512-span batch, so no export starts inside one.
        times[series]["call"].append(_block(call, calls, 20, between))
        times[series]["stream"].append(_block(stream, streams, 3, between))

    notes = []
    wrapped = True
    if alternate:
        for _ in range(rounds):
            measure("bare")
            instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
            wrapped = wrapped and _create_attr() is not original
            measure("inst")
            instrumentor.uninstrument()
            if _create_attr() is not original:
                notes.append("uninstrument() stopped restoring Completions.create mid-run; rest sequential")
                alternate = False
                break
            measure("control")
    if not alternate:
        for _ in range(rounds - len(times["control"]["call"])):
            measure("bare")
            measure("control")
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
        wrapped = _create_attr() is not original
        for _ in range(rounds - len(times["inst"]["call"])):
            measure("inst")
        instrumentor.uninstrument()
    if not wrapped:
        notes.append("instrument() did not wrap openai Completions.create: the overhead shown is not an integration's")
    tracer_provider.shutdown()
    meter_provider.shutdown()

    best = {series: {kind: min(values) for kind, values in kinds.items()} for series, kinds in times.items()}
    # A second reading, robust to slow drifts in the VM's load: the median over rounds of the difference between
    # a round's instrumented block and its bare block, run moments apart (alternating mode only).
    paired: dict[str, float | None] = {"call": None, "stream": None}
    if alternate:
        for kind in paired:
            paired[kind] = statistics.median(i - b for i, b in zip(times["inst"][kind], times["bare"][kind],
                                                                    strict=True))
    bare, inst, control = best["bare"], best["inst"], best["control"]
    return {
        "mode": "alternating" if alternate else "sequential (bare first, then instrumented)",
        "rounds": rounds, "calls_per_block": calls, "streams_per_block": streams, "chunks_per_stream": chunks,
        "wraps_create": wrapped, "notes": notes,
        "bare_us_per_call": bare["call"] * 1e6, "inst_us_per_call": inst["call"] * 1e6,
        "overhead_us_per_call": (inst["call"] - bare["call"]) * 1e6,
        "ratio_call": inst["call"] / bare["call"],
        "aa_us_per_call": (control["call"] - bare["call"]) * 1e6,
        "bare_us_per_stream": bare["stream"] * 1e6, "inst_us_per_stream": inst["stream"] * 1e6,
        "overhead_us_per_stream": (inst["stream"] - bare["stream"]) * 1e6,
        "overhead_us_per_chunk": (inst["stream"] - bare["stream"]) / chunks * 1e6,
        "ratio_stream": inst["stream"] / bare["stream"],
        "aa_us_per_chunk": (control["stream"] - bare["stream"]) / chunks * 1e6,
        "paired_median_us_per_call": None if paired["call"] is None else paired["call"] * 1e6,
        "paired_median_us_per_chunk": None if paired["stream"] is None else paired["stream"] / chunks * 1e6,
        "blocks_us": {series: {kind: [round(v * 1e6, 1) for v in values] for kind, values in kinds.items()}
                      for series, kinds in times.items()},
    }


# --------------------------------------------------------------------------------------------------
# output


def _yes_no(scenario: dict[str, Any] | None, we_asked_usage: bool) -> str:
    if not scenario:
        return "?"
    if scenario.get("error"):
        return "error"
    if not scenario.get("spans"):
        return "no span"
    span, metric = scenario.get("span_output_tokens"), scenario.get("metric_output_tokens")
    text = f"span {span}" if span else "span no"
    text += f", metric {metric:g}" if metric else ", metric no"
    if scenario.get("request_include_usage") and not we_asked_usage:
        text += " (it asked for include_usage)"
    return text


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[dict[str, Any]]) -> str:
    rows = [("arm", "us/call over", "ratio", "us/chunk over", "ratio", "A/A us/call", "A/A us/chunk",
             "paired med us/call", "paired med us/chunk", "mode",
             "uninstrument", "stream+usage: out tokens", "stream no usage: out tokens", "versions")]
    for r in results:
        b, c = r.get("bench") or {}, r.get("check") or {}
        u = c.get("uninstrument") or {}
        uninstrument = "?" if "failed" in c or not u else "n/a (not wrapped)" if not c.get("wraps_create") else (
            "works" if c.get("uninstrument_ok") else f"no (restores={u.get('restores_create')}, "
            f"silent={u.get('no_spans_after')}{', ' + u['error'] if u.get('error') else ''})")
        versions = r.get("versions") or c.get("versions") or {}
        shown = ", ".join(f"{k} {v}" for k, v in versions.items() if k not in ("python", "httpx2"))
        mode = b["mode"].split(" ")[0] if b else "failed"
        if b and not b.get("wraps_create"):
            mode += " NOT WRAPPED"
        rows.append((
            r["arm"], _fmt(b.get("overhead_us_per_call"), ".1f"), _fmt(b.get("ratio_call"), ".3f"),
            _fmt(b.get("overhead_us_per_chunk"), ".2f"), _fmt(b.get("ratio_stream"), ".3f"),
            _fmt(b.get("aa_us_per_call"), "+.1f"), _fmt(b.get("aa_us_per_chunk"), "+.2f"),
            _fmt(b.get("paired_median_us_per_call"), ".1f"), _fmt(b.get("paired_median_us_per_chunk"), ".2f"),
            mode, uninstrument,
            _yes_no(c.get("stream_usage"), True) if "failed" not in c else "check failed",
            _yes_no(c.get("stream_no_usage"), False) if "failed" not in c else "check failed", shown,
        ))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    details = [
        "",
        "over = instrumented minus bare, each the fastest block's per-call time; ratio = instrumented / bare;",
        "us/chunk = stream overhead / chunks per stream (the per-stream fixed cost included); A/A = a second bare",
        "series minus the first (the noise floor); paired med = median over rounds of (instrumented - bare) block",
        "times taken moments apart (alternating mode only). out tokens: what the check run's span / the",
        "gen_ai.client.token.usage histogram recorded as output tokens (canned usage: 50).",
        "",
        "absolute (min block per call): arm: bare / instrumented us per call; bare / instrumented us per stream"]
    for r in results:
        b = r.get("bench") or {}
        if b:
            details.append(f"  {r['arm']}: {b['bare_us_per_call']:.1f} / {b['inst_us_per_call']:.1f} us per call; "
                           f"{b['bare_us_per_stream']:.1f} / {b['inst_us_per_stream']:.1f} us per stream of "
                           f"{b['chunks_per_stream']} chunks ({b['overhead_us_per_stream']:+.1f} us per stream); "
                           f"{b['rounds']} rounds x {b['calls_per_block']} calls / {b['streams_per_block']} streams")
        for note in b.get("notes", []):
            details.append(f"  {r['arm']}: NOTE {note}")
        c = r.get("check") or {}
        if "failed" in c:
            details.append(f"  {r['arm']}: check run failed: {c['failed'][-400:]}")
        if r.get("bench_error"):
            details.append(f"  {r['arm']}: timed run failed: {r['bench_error'][-400:]}")
        for line in c.get("log", [])[:5]:
            details.append(f"  {r['arm']}: logged during check: {line}")
    return "\n".join(lines + details)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", choices=ARMS)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=100, help="non-streaming calls per block (< 512)")
    parser.add_argument("--streams", type=int, default=20, help="streams per block (< 512)")
    parser.add_argument("--label", help="the arm's name in the table (for a variant run with other settings)")
    parser.add_argument("--json", type=Path, help="write this arm's result here")
    parser.add_argument("--check-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, nargs="+", help="print one table from these result files")
    args = parser.parse_args()

    if args.table:
        results = []
        for path in args.table:
            try:
                results.append(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                results.append({"arm": path.stem, "bench_error": f"no result: {exc}", "check": {}})
        print(table(results))
        return
    if args.arm is None:
        parser.error("--arm or --table is required")
    if args.check_only:
        print(json.dumps(check(args.arm), default=str))
        return

    result: dict[str, Any] = {"arm": args.label or args.arm, "versions": _versions(args.arm)}
    result["check"] = _run_check(args.arm)
    # Alternate only when the check saw uninstrument() really give the bare method back.
    alternate = bool(result["check"].get("uninstrument_ok"))
    try:
        result["bench"] = bench(args.arm, args.rounds, args.calls, args.streams, alternate)
    except Exception as exc:
        result["bench_error"] = f"{type(exc).__name__}: {exc}"
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    print(table([result]))
    timed = result.get("bench") or {}
    if timed.get("overhead_us_per_call") is not None:  # the paired medians where alternating: the steadier numbers
        arm, paired = result["arm"], timed.get("paired_median_us_per_call") is not None
        call, chunk = (("paired_median_us_per_call", "paired_median_us_per_chunk") if paired
                       else ("overhead_us_per_call", "overhead_us_per_chunk"))
        bench_results.record(f"openai ({arm}): per call over the bare call", timed[call], "us", 60)
        bench_results.record(f"openai ({arm}): per stream chunk over bare", timed[chunk], "us", 2)
    if "bench" not in result:
        sys.exit(1)


if __name__ == "__main__":
    main()
