"""What the web-app tests do to an app under opentelemetry-instrument: post a request with the proxy's headers,
read the tokens its own Prometheus endpoint counted per user and department."""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from otel_tokens import names


def tokens_by_principal(metrics_url: str) -> dict[tuple[str, str], float]:
    """(user_id, department) -> tokens, from the app's metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    out: dict[tuple[str, str], float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == names.PROM_LLM_TOKEN_USAGE:
                out[sample.labels["user_id"], sample.labels["department"]] += sample.value
    return dict(out)


def post(url: str, headers: list[tuple[str, str]]) -> int:
    """POST {} with the headers (a name may repeat); the status."""
    request = urllib.request.Request(url, data=b"{}", method="POST")
    for name, value in headers:
        request.add_header(name, value)
    return urllib.request.urlopen(request, timeout=30).status
