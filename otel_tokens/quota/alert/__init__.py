"""Alert mode: the guard follows the rule engine's own alert state (a ruler's /api/v1/alerts, or the
`otel-tokens guard` endpoint that merges several), so alerts and enforcement share one source of truth."""
