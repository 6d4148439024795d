"""The quota file of the budget forecast tests, shared by the Prometheus and the VictoriaMetrics runs."""

FORECAST_QUOTAS = {"departments": {"default": {"tokens": 10000}, "overrides": {"ops": {"cost": 100}}}}
