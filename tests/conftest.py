"""Fixtures shared by every test module; the helpers themselves live in tests/support/.

Tests are grouped by kind: unit/ (no server), integrations/ (real libraries in process: the openai SDK
over real HTTP to a local server, transformers, web apps), e2e/ (real binaries and processes:
Prometheus, Alertmanager, Redis, VictoriaMetrics, apps under opentelemetry-instrument). Every test
under e2e/ carries the `e2e` marker, set here by folder, so `-m "not e2e"` needs no system package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_tokens import TokenUsageInstrumentor
from otel_tokens.config.settings import Settings
from tests.support.binaries import require_binary
from tests.support.hostile_harness import Harness, instrumented_harness
from tests.support.redis_server import RedisServer
from tests.support.telemetry import LogRecords, Telemetry, make_telemetry
from tests.support.victoria_stack import VictoriaStack

__all__ = ["LogRecords", "Telemetry", "make_telemetry", "require_binary"]


E2E = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    tel, tracer_provider, meter_provider = make_telemetry()
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield tel
    finally:
        instrumentor.uninstrument()


@pytest.fixture
def harness() -> Iterator[Harness]:
    """For the hostile-response properties: streams counted locally (no usage chunk asked for)."""
    yield from instrumented_harness(Settings(stream_include_usage=False))


@pytest.fixture
def harness_usage_chunk() -> Iterator[Harness]:
    """For the hostile-response properties: the usage chunk asked for on every stream."""
    yield from instrumented_harness(Settings(stream_include_usage=True))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session; `redis_url` empties it for each test."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()  # a test stopped it
    redis_server.client().flushall()
    return redis_server.url


def pytest_collection_finish(session: pytest.Session) -> None:
    """The VictoriaMetrics stack starts as soon as a test that uses it (through `early_victoria`) is
    selected, and runs while the others do: the rules bucket usage every 5 minutes, so starting early
    is what keeps that test short. Keyed on the fixture, not a path, so moving the test keeps it early."""
    if any("early_victoria" in getattr(item, "fixturenames", ()) for item in session.items):
        from tests.support.victoria_stack import EARLY

        EARLY.start_background()


@pytest.fixture(scope="session")
def early_victoria() -> VictoriaStack:
    """The stack started at collection (VictoriaMetrics, vmalert and their Alertmanager), once ready."""
    from tests.support.victoria_stack import BINARIES, EARLY

    for name in BINARIES:
        require_binary(name)
    return EARLY.wait()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.support.victoria_stack import EARLY

    if EARLY.started:
        EARLY.ready.wait(60)
        EARLY.stop()
