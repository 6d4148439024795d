"""A plain app in budget mode, run as its own process: `TokenUsageInstrumentor().instrument()`
and nothing else, configured only by OTEL_TOKENS_QUOTA_FILE and OTEL_TOKENS_BUDGET_STORE (plus
OTEL_TOKENS_CONFIG where a test says so). CALLERS threads call the model for BUDGET_USER until each
has been refused REFUSALS times; OTHER_CALLS calls for OTHER_USER run beside them. Prints one JSON
line: calls served and refused per user, and the tokens its own metrics counted per user.

Environment: OPENAI_BASE_URL, BUDGET_USER, OTHER_USER, CALLERS, MAX_TOKENS ('' = none), REFUSALS (or CALLS: that
many calls per caller, whatever their outcome), OTHER_CALLS
(and OTEL_SERVICE_NAME: the app it is charged as). The JSON also says which scope refused each refused call
and the tokens its metrics counted per app (the points' service.name).
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter

import openai
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_tokens import QuotaExceededError, TokenUsageInstrumentor, names, usage_context


def main() -> None:
    reader = InMemoryMetricReader()
    TokenUsageInstrumentor().instrument(meter_provider=MeterProvider(metric_readers=[reader]))
    client = openai.OpenAI(api_key="local", max_retries=0)
    max_tokens = int(os.environ["MAX_TOKENS"]) if os.environ.get("MAX_TOKENS") else None
    outcomes: Counter[str] = Counter()
    refused_by: Counter[str] = Counter()  # scope -> refusals
    lock = threading.Lock()

    def call(user: str) -> bool:
        options = {"max_tokens": max_tokens} if max_tokens is not None else {}
        try:
            with usage_context(user_id=user, department="research"):
                client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                               **options)
        except QuotaExceededError as refusal:
            with lock:
                outcomes[f"{user} refused"] += 1
                refused_by[f"{refusal.scope} {refusal.principal} {refusal.window}"] += 1
            return False
        with lock:
            outcomes[f"{user} served"] += 1
        return True

    def caller() -> None:
        if os.environ.get("CALLS"):  # a fixed number of calls, served or not (a limit on calls in flight: the
            for _ in range(int(os.environ["CALLS"])):  # last caller left alone is never refused)
                call(os.environ["BUDGET_USER"])
            return
        refusals = 0
        while refusals < int(os.environ.get("REFUSALS", "3")):
            if not call(os.environ["BUDGET_USER"]):
                refusals += 1

    def other() -> None:
        for _ in range(int(os.environ.get("OTHER_CALLS", "5"))):
            call(os.environ["OTHER_USER"])

    threads = [threading.Thread(target=caller) for _ in range(int(os.environ["CALLERS"]))]
    threads.append(threading.Thread(target=other))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tokens: Counter[str] = Counter()
    apps: Counter[str] = Counter()
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == names.METRIC_LLM_TOKEN_USAGE:
                    for point in metric.data.data_points:
                        tokens[str(point.attributes.get(names.USER_ID))] += point.value
                        apps[str(point.attributes.get(names.SERVICE_NAME))] += point.value
    print(json.dumps({"outcomes": outcomes, "tokens": tokens, "apps": apps, "refused_by": refused_by}), flush=True)


if __name__ == "__main__":
    main()  # the settlements still queued are sent at exit (atexit), as in any app
