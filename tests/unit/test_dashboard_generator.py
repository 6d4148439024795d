"""grafana/dashboards/*.json are the generator's output byte for byte (grafana/generator, `make dashboards`), and
every field in them is one the SDK's typed schema knows, but the few that grafana/generator/sdk_extras.py names."""

import json
import sys
from typing import Any

import pytest

from tests.support.grafana import DASHBOARD_FILES

if sys.version_info < (3, 11):  # grafana-foundation-sdk needs 3.11: the dev extra installs it only there
    pytest.skip("grafana-foundation-sdk needs Python 3.11", allow_module_level=True)

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from grafana.generator.__main__ import DASHBOARDS, main, rendered
from grafana.generator.sdk_extras import PROMETHEUS_ANNOTATION_FIELDS, QUERY_VARIABLE_FIELDS


def test_committed_dashboards_are_the_generated_ones_byte_for_byte() -> None:
    generated = rendered()
    assert sorted(generated) == sorted(p.name for p in DASHBOARD_FILES), "a dashboard the generator does not write"
    for name, text in generated.items():
        assert (DASHBOARDS / name).read_text() == text, f"{name} differs from the generator's output: make dashboards"


def test_check_mode_names_a_stale_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import grafana.generator.__main__ as generator

    for name, text in rendered().items():
        (tmp_path / name).write_text(text)
    (tmp_path / "llm-overview.json").write_text("{}\n")
    monkeypatch.setattr(generator, "DASHBOARDS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["generator", "--check"])
    assert main() == 1
    assert "llm-overview.json" in capsys.readouterr().err
    assert (tmp_path / "llm-overview.json").read_text() == "{}\n", "--check writes nothing"


def _lost(before: Any, after: Any, path: str = "") -> list[str]:
    """Paths of `before` that are missing or different in `after`."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [p for key, value in before.items()
                for p in ([f"{path}.{key}"] if key not in after else _lost(value, after[key], f"{path}.{key}"))]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [p for i, (a, b) in enumerate(zip(before, after, strict=True)) for p in _lost(a, b, f"{path}[{i}]")]
    return [] if before == after else [path]


def test_every_field_survives_the_sdk_schema_but_the_named_extras() -> None:
    """A round trip through the SDK's typed models (panel options and field configs by plugin, queries by data
    source) drops what Grafana 11.6's schema does not define: only the extras sdk_extras names may be dropped."""
    register_default_plugins()
    for path in DASHBOARD_FILES:
        committed = json.loads(path.read_text())
        back = json.loads(json.dumps(Dashboard.from_json(committed), cls=JSONEncoder))
        lost = _lost(committed, back)
        expected = [f".annotations.list[1].{f}" for f in PROMETHEUS_ANNOTATION_FIELDS] + [
            f".templating.list[{i}].{f}" for i in range(len(committed["templating"]["list"]))
            for f in QUERY_VARIABLE_FIELDS]
        assert sorted(lost) == sorted(expected), path.name
        assert {p["type"] for p in committed["panels"]} <= {"stat", "timeseries", "bargauge", "table"}
