#!/usr/bin/env bash
# Creates (idempotently) the virtual environments of the peer OpenAI instrumentations that
# bench/openai_overhead.py compares otel-tokens against:
#   .bench-venvs/openllmetry  opentelemetry-instrumentation-openai (OpenLLMetry / traceloop)
#   .bench-venvs/otel-v2      opentelemetry-instrumentation-openai-v2 (the official contrib one)
# Each gets the same openai and opentelemetry-sdk as the main venv, so only the instrumentation differs.
# A venv whose pinned packages are already installed at the pinned versions is left as it is.
# Never installs torch: the resolution is checked first (pip --dry-run) and refused if it pulls torch.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENVS="${BENCH_VENVS:-$ROOT/.bench-venvs}"
PYTHON="${PYTHON:-python3}"

OPENAI_VERSION="${OPENAI_VERSION:-3.54.0}"
SDK_VERSION="${SDK_VERSION:-1.45.2}"
OPENLLMETRY_VERSION="${OPENLLMETRY_VERSION:-0.62.4}"
OTEL_V2_VERSION="${OTEL_V2_VERSION:-2.4b0}"
# The v2 instrumentation breaks with newer opentelemetry-util-genai (1.x changed its API): keep this pin.
UTIL_GENAI_VERSION="${UTIL_GENAI_VERSION:-0.4b0}"
# The v2 instrumentation imports the legacy `httpx` (openai 3.x depends on httpx2 only) and does not declare it.
HTTPX_VERSION="${HTTPX_VERSION:-0.28.1}"

# make_venv NAME REQUIREMENT...  (every requirement pinned with ==, so "installed" can be checked)
make_venv() {
    local name="$1"; shift
    local dir="$VENVS/$name"
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" - "$@" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for requirement in sys.argv[1:]:
    name, _, wanted = requirement.partition("==")
    try:
        if version(name) != wanted:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
    then
        echo "peers: $name already installed ($*)"
        return 0
    fi
    echo "peers: creating $dir with $*"
    mkdir -p "$VENVS"
    [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
    local report
    report="$(mktemp)"
    "$dir/bin/pip" install --quiet --dry-run --report "$report" "$@"
    if "$dir/bin/python" - "$report" <<'EOF'
import json
import sys

names = {item["metadata"]["name"].lower() for item in json.load(open(sys.argv[1]))["install"]}
sys.exit(0 if {"torch", "pytorch"} & names else 1)
EOF
    then
        rm -f "$report"
        echo "peers: $name would install torch; refusing (see the dry-run of: pip install $*)" >&2
        return 1
    fi
    rm -f "$report"
    "$dir/bin/pip" install --quiet "$@"
}

make_venv openllmetry \
    "openai==$OPENAI_VERSION" "opentelemetry-sdk==$SDK_VERSION" \
    "opentelemetry-instrumentation-openai==$OPENLLMETRY_VERSION"

make_venv otel-v2 \
    "openai==$OPENAI_VERSION" "opentelemetry-sdk==$SDK_VERSION" \
    "opentelemetry-instrumentation-openai-v2==$OTEL_V2_VERSION" \
    "opentelemetry-util-genai==$UTIL_GENAI_VERSION" "httpx==$HTTPX_VERSION"
