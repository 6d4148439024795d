# Everything a fresh machine needs: `make demo` shows the product, `make test` runs the suite.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-unit demo lint dashboards bench bench-peers bench-scale clean system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel that lies on this machine; an unpinned torch would pull gigabytes of CUDA.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

# Prometheus, Alertmanager, Redis (budget mode's store) and VictoriaMetrics + vmalert (the rules on a
# horizontally scalable engine) from Debian: the tests start the real binaries; systemd for
# systemd-analyze, which checks the shipped digest timer.
SYSTEM_PACKAGES := prometheus prometheus-alertmanager redis-server victoria-metrics systemd
system-deps:
	@if command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null \
	    && command -v amtool >/dev/null && command -v redis-server >/dev/null \
	    && command -v victoria-metrics >/dev/null && command -v vmalert >/dev/null \
	    && command -v systemd-analyze >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(SYSTEM_PACKAGES); \
	else \
	  echo "missing system packages: sudo apt-get install -y $(SYSTEM_PACKAGES)" >&2; \
	  exit 1; \
	fi

# Three workers, a module each at a time: most e2e tests wait on Prometheus/Alertmanager timers, not the
# CPU (the whole suite used 143 % of a 2-core machine): 473 s with three workers, 787 s with two (before
# the waits were also cut, so not all of it is the third worker). TEST_WORKERS=0 runs it serially.
TEST_WORKERS ?= 3
test: system-deps $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# Everything that needs no system package and no root: the unit and integration tests (real libraries
# in process, a local OpenAI-compatible server), not the e2e ones (Prometheus, Alertmanager, Redis, apps
# under opentelemetry-instrument). About two minutes.
test-unit: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not e2e"

lint: $(STAMP)
	$(PY) -m ruff check .

# grafana/dashboards/*.json from grafana/generator (Python on grafana-foundation-sdk); a test fails when the
# committed JSON differs, so edit the Python and run this.
dashboards: $(STAMP)
	$(PY) -m grafana.generator

# The whole product on this machine: Prometheus + Alertmanager, a local model server, traffic for
# several users under opentelemetry-instrument, live usage, the quota alerts, the report.
demo: system-deps $(STAMP)
	$(PY) examples/demo.py $(DEMO_ARGS)

# each script records its headline numbers in .bench/latest.json; the last step prints them beside the committed
# ones (bench/baseline.json) and flags any over 20 % worse (`$(PY) bench/compare.py .bench/latest.json --update`
# makes today's the baseline: commit it with the change that moved them)
BENCH_RESULTS := .bench/latest.json
bench: system-deps $(STAMP)
	rm -f $(BENCH_RESULTS)
	BENCH_RESULTS=$(BENCH_RESULTS) $(PY) bench/transformers_overhead.py
	BENCH_RESULTS=$(BENCH_RESULTS) $(PY) bench/accounting_overhead.py
	BENCH_RESULTS=$(BENCH_RESULTS) $(PY) bench/openai_overhead.py --arm ours
	BENCH_RESULTS=$(BENCH_RESULTS) $(PY) bench/guard_overhead.py
	BENCH_RESULTS=$(BENCH_RESULTS) $(PY) bench/guard_poll.py
	$(PY) bench/stream_counts.py
	$(PY) bench/compare.py $(BENCH_RESULTS)

# ours against OpenLLMetry and the official openai-v2 instrumentation, each in its own venv (.bench-venvs/)
bench-peers: $(STAMP)
	bash bench/run_openai_bench.sh

# quota rule evaluation cost against users, on a real Prometheus over backfilled counters (minutes)
bench-scale: system-deps $(STAMP)
	$(PY) bench/quota_rules_scale.py $(SCALE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
