# Everything a fresh machine needs: `make demo` shows the product, `make test` runs the suite.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo lint bench bench-peers clean system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel that lies on this machine; an unpinned torch would pull gigabytes of CUDA.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

# Prometheus and Alertmanager from Debian: the tests start the real binaries.
system-deps:
	@if command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null \
	    && command -v amtool >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus prometheus-alertmanager; \
	else \
	  echo "Prometheus and Alertmanager are missing: sudo apt-get install -y prometheus prometheus-alertmanager" >&2; \
	  exit 1; \
	fi

test: system-deps $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

# For now: the example app under the OpenTelemetry agent, spans and metrics printed to the console.
demo: $(STAMP)
	OTEL_SERVICE_NAME=otel-tokens-demo OTEL_TRACES_EXPORTER=console OTEL_METRICS_EXPORTER=console \
	OTEL_LOGS_EXPORTER=none $(VENV)/bin/opentelemetry-instrument $(PY) examples/transformers_app.py
	@echo
	@echo "Above: one span per generate call (gen_ai.usage.* and user.id), then llm.token.usage per user."

bench: $(STAMP)
	$(PY) bench/transformers_overhead.py
	$(PY) bench/accounting_overhead.py
	$(PY) bench/openai_overhead.py --arm ours

# ours against OpenLLMetry and the official openai-v2 instrumentation, each in its own venv (.bench-venvs/)
bench-peers: $(STAMP)
	bash bench/run_openai_bench.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
