"""An instrumented app, in its own process, loads no module of the operations tools."""

from __future__ import annotations

import subprocess
import sys


def test_an_instrumented_app_loads_no_operations_module():
    code = ("import sys, otel_tokens\n"
            "from otel_tokens import TokenUsageInstrumentor\n"
            "TokenUsageInstrumentor().instrument()\n"
            "import openai\n"
            "print(sorted(m for m in sys.modules if m.startswith('otel_tokens.ops')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
