"""Prices as `otel-tokens doctor` resolves them, in its own process."""

from __future__ import annotations

import os
import subprocess
import sys


def test_doctor_command_resolves_named_models(tmp_path):
    price_file = tmp_path / "p.yaml"
    price_file.write_text("version: 1\nmodels:\n  - {match: 'qwen2.5-*', currency: CNY, input: 0.5, output: 1,"
                          " date: '2025-01-02', source: 'internal GPU cost'}\n")
    env = {**os.environ, "OTEL_TOKENS_PRICE_FILE": str(price_file), "OTEL_TOKENS_CURRENCY": "CNY"}
    out = subprocess.run([sys.executable, "-m", "otel_tokens.ops.cli", "doctor", "--model", "qwen2.5-7b-instruct",
                          "--model", "no-such-model"], env=env, capture_output=True, text=True, check=True).stdout
    assert "qwen2.5-7b-instruct (openai): input 0.5, output 1 CNY; matched 'qwen2.5-*' from price file" in out
    assert "no-such-model (openai): NO PRICE" in out
    assert "transformers" in out and "OTEL_EXPORTER_OTLP_ENDPOINT" in out
