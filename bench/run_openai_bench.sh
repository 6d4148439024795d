#!/usr/bin/env bash
# The openai overhead bench, all arms: otel-tokens (main venv) and its peers (their own venvs, made by
# bench/peers.sh), one process per arm, then one table. Extra arguments go to every arm's run
# (e.g. --rounds 60). Besides the three arms at their defaults, two variants for a like-for-like reading:
#   openllmetry no-content: TRACELOOP_TRACE_CONTENT=false (OpenLLMetry records prompts and completions by
#                           default; otel-tokens and otel-v2 do not)
#   otel-v2 latest-semconv: OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental (its util-genai path)
# Set BENCH_VARIANTS=0 to skip them. The arm `ours` needs the OpenAI integration of otel-tokens; when it is
# missing the table says NOT WRAPPED (or the arm's run fails) and the peers' rows still come.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENVS="${BENCH_VENVS:-$ROOT/.bench-venvs}"
MAIN_PY="${MAIN_PY:-$ROOT/.venv/bin/python}"
# Each arm's full result (block times, span attributes of the check run) as JSON: kept when BENCH_OUT is set.
if [ -n "${BENCH_OUT:-}" ]; then
    OUT="$BENCH_OUT"; mkdir -p "$OUT"
else
    OUT="$(mktemp -d)"; trap 'rm -rf "$OUT"' EXIT
fi

BENCH_VENVS="$VENVS" bash bench/peers.sh || { echo "peer venvs could not be made" >&2; exit 1; }

# run_arm LABEL PYTHON ARM [VAR=VALUE...]
run_arm() {
    local label="$1" python="$2" arm="$3"; shift 3
    echo "== $label ($python)" >&2
    env "$@" "$python" bench/openai_overhead.py --arm "$arm" --label "$label" --json "$OUT/$label.json" "${ARGS[@]}" >&2 \
        || echo "== $label: run failed (exit $?)" >&2
    FILES+=("$OUT/$label.json")
}

ARGS=("$@")
FILES=()
run_arm ours "$MAIN_PY" ours
run_arm openllmetry "$VENVS/openllmetry/bin/python" openllmetry
run_arm otel-v2 "$VENVS/otel-v2/bin/python" otel-v2
if [ "${BENCH_VARIANTS:-1}" != 0 ]; then
    run_arm "openllmetry no-content" "$VENVS/openllmetry/bin/python" openllmetry TRACELOOP_TRACE_CONTENT=false
    run_arm "otel-v2 latest-semconv" "$VENVS/otel-v2/bin/python" otel-v2 \
        OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental
fi

echo
echo "openai chat.completions overhead per call, instrumented vs bare, in-process httpx2.MockTransport"
"$MAIN_PY" bench/openai_overhead.py --table "${FILES[@]}"
