"""`otel-tokens report`: a usage digest read from Prometheus, for people who do not open Grafana.

"24h ending 2025-06-02 09:00 UTC: 1,248,900 tokens (+12.0 % on the previous 24h), USD 12.34,
3,210 requests (2 errors); mostly department support (61.0 %), top user alice (22.0 %)."

Everything comes from Prometheus's HTTP API (instant queries at `--at`, default now) over the
metrics the package emits and the quota rules' recorded limits. Window sums are exact: they use
the quota rules' own construction (`rules.usage_over`: per series, the last value minus the value
at the window's start, a series born inside the window from zero, `increase()` only after a
counter reset), never bare `increase()`, which extrapolates to the window's edges and drops a new
series' first value. The previous window of the same length is the same queries evaluated one
window earlier, so the two never overlap.

rich (the table) and matplotlib (`--png`) are optional (`pip install 'otel-tokens[report]'`) and
imported only when used.
"""

from otel_tokens.ops.report.command import add_arguments, one_line_error, run
from otel_tokens.ops.report.model import FORMATS, UNATTRIBUTED, Report, ReportError, parse_window, usage_by
from otel_tokens.ops.report.queries import build, token_timeline
from otel_tokens.ops.report.render import format_money, to_csv, to_json, to_markdown

__all__ = ["FORMATS", "UNATTRIBUTED", "Report", "ReportError", "add_arguments", "build", "format_money",
           "one_line_error", "parse_window", "run", "to_csv", "to_json", "to_markdown", "token_timeline", "usage_by"]
