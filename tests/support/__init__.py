"""What the tests share: the local OpenAI-compatible server, the real Prometheus/Alertmanager stack,
tiny transformers models and tokenizers, in-memory telemetry, and the small apps that tests run
under `opentelemetry-instrument`."""
