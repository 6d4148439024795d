"""The first five minutes, as a new user has them: the README's install line and its zero-code line, read
from the README itself, run in a clean virtual environment. The distro's defaults (OTLP over gRPC, a logs
exporter too) must find what they ask for, and nothing may pull torch."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

from tests.support.openai_server import OpenAIServer

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _readme_line(pattern: str) -> str:
    """The first line of the README that matches, without its comment: what a reader copies first."""
    return next(line.split("   #")[0].strip() for line in README.splitlines() if re.match(pattern, line))


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A new venv, shared by the two tests (each installs what its README lines say into it)."""
    env_dir = tmp_path_factory.mktemp("first-minutes") / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    env = {"PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", str(env_dir)),
           "VIRTUAL_ENV": str(env_dir), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONFIG_FILE", "PIP_TRUSTED_HOST"):
        if name in os.environ:  # how this machine reaches the registry, nothing of the project's
            env[name] = os.environ[name]
    return env_dir, env


def test_the_readme_install_and_zero_code_line_export_spans_and_metrics_in_a_clean_venv(tmp_path, clean_venv):
    from tests.support.otlp_grpc_receiver import OtlpGrpcReceiver

    install = _readme_line(r"pip install '/path/to/otel-tokens\[")
    zero_code = _readme_line(r"opentelemetry-instrument --service_name kb-chat python app\.py")
    env_dir, env = clean_venv
    command = install.replace("/path/to/otel-tokens", str(ROOT))
    started = time.monotonic()
    pip = subprocess.run(command + " -q", shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    installed = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                               env=env, capture_output=True, text=True, check=True).stdout
    assert not re.search(r"^torch==", installed, re.MULTILINE), "an extra pulled torch (a CUDA wheel)"
    install_s = time.monotonic() - started

    shutil.copy(ROOT / "examples" / "openai_client.py", tmp_path / "app.py")
    receiver = OtlpGrpcReceiver()
    try:
        with OpenAIServer() as server:
            run_env = {**env, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "local",
                       "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}"}
            result = subprocess.run(zero_code, shell=True, cwd=tmp_path, env=run_env, capture_output=True,
                                    text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        for failure in ("Configuration of configurator failed", "Failed to auto initialize", "not found in entry point",
                        "Traceback"):
            assert failure not in result.stderr, result.stderr[-3000:]
        names_ = {span.name for span in receiver.spans}
        assert "chat tiny-chat-model" in names_, names_
        totals = receiver.token_totals()
        assert totals[("alice", "input")] > 0 and totals[("alice", "output")] > 0, totals
    finally:
        receiver.stop()
    print(f"\nREADME install in a clean venv: {install_s:.0f} s; zero-code line exported "
          f"{len(receiver.spans)} spans and llm.token.usage {totals} over OTLP/gRPC")
    assert sys.executable  # the test's own interpreter untouched


def _one_minute_block() -> list[str]:
    """The shell lines of "See it in one minute", continuations joined, comments dropped."""
    section = README.split("### See it in one minute", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines, current = [], ""
    for raw in block.splitlines():
        current += raw.rstrip("\\").rstrip() + " " if raw.endswith("\\") else raw
        if not raw.endswith("\\"):
            lines.append(current.split("   #")[0].strip())
            current = ""
    return lines


def test_see_it_in_one_minute_the_readme_s_lines_give_a_prometheus_scrape(tmp_path, clean_venv):
    """The README's one-minute block, line by line, in a clean venv: the app's own /metrics, then a real
    Prometheus with the README's config and the shipped rules scrapes llm_token_usage_total."""
    from tests.support.binaries import require_binary
    from tests.support.prometheus_stack import free_port, query, wait_http

    install, run_app, curl, rules, config, prometheus = _one_minute_block()
    assert install.startswith("pip install '/path/to/otel-tokens[") and "opentelemetry-instrument python app.py" \
        in run_app and curl.startswith("curl") and rules.startswith("otel-tokens rules") and \
        config.startswith("printf") and prometheus.startswith("prometheus --config.file=prometheus.yml")
    _, env = clean_venv
    pip = subprocess.run(install.replace("/path/to/otel-tokens", str(ROOT)) + " -q", shell=True, cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    (tmp_path / "collector").mkdir()
    shutil.copy(ROOT / "collector" / "quotas.yaml", tmp_path / "collector" / "quotas.yaml")
    app = (ROOT / "examples" / "openai_client.py").read_text() + "\nimport time\ntime.sleep(600)  # a server\n"
    (tmp_path / "app.py").write_text(app)
    metrics_port = free_port()
    processes = []
    try:
        with OpenAIServer() as server:
            app_env = {**env, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "local",
                       "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port)}  # the README's 9464 may be taken here
            # a session of its own: the README's line runs under a shell, whose child terminate() would not reach
            processes.append(subprocess.Popen(run_app, shell=True, cwd=tmp_path, env=app_env, start_new_session=True,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
            deadline = time.monotonic() + 60
            text = ""
            while "llm_token_usage_total{" not in text:
                assert time.monotonic() < deadline and processes[0].poll() is None, "no /metrics from the app"
                try:
                    import urllib.request

                    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as page:
                        text = page.read().decode()
                except OSError:
                    time.sleep(0.3)
            assert 'user_id="alice"' in text  # what `curl ... | grep llm_token_usage_total` shows
            subprocess.run(rules, shell=True, cwd=tmp_path, env=env, check=True, timeout=120)
            subprocess.run(config.replace("127.0.0.1:9464", f"127.0.0.1:{metrics_port}"), shell=True, cwd=tmp_path,
                           env=env, check=True, timeout=30)
            port = free_port()
            processes.append(subprocess.Popen(
                prometheus.replace("prometheus ", f"{require_binary('prometheus')} ", 1).split()
                + [f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={tmp_path / 'data'}"],
                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_http(f"http://127.0.0.1:{port}/-/ready")
            deadline = time.monotonic() + 60
            while not (found := query(f"http://127.0.0.1:{port}", 'llm_token_usage_total{user_id="alice"}')):
                assert time.monotonic() < deadline, "Prometheus never scraped the app"
                time.sleep(1)
            assert {r["metric"]["job"] for r in found} == {"kb-chat"}
            groups = json_get(f"http://127.0.0.1:{port}/api/v1/rules")["data"]["groups"]
            assert groups and all(g.get("rules") for g in groups)  # the shipped rules loaded
    finally:
        for process in processes:
            if process.args == run_app:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)  # the shell and the app it started
            else:
                process.terminate()
            process.wait(timeout=10)


def json_get(url: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)
