"""Operations: what runs in a terminal or a sidecar, never inside the instrumented app.

The `otel-tokens` CLI (cli.py), `doctor`, `rules` (quota file -> Prometheus rule file), `report`
(usage statements from Prometheus) and the `guard` endpoint server. These may import the runtime
package; the runtime never imports them (tests/unit/test_layout.py checks it).
"""
