"""A FastAPI app as users deploy one behind an authenticating proxy, run by the tests under
`opentelemetry-instrument uvicorn` (zero code: the FastAPI instrumentation and ours, configured by
OTEL_TOKENS_TRUSTED_HEADERS). Each request makes one chat call to MODEL_URL.

    MODEL_URL=http://127.0.0.1:8000/v1 opentelemetry-instrument uvicorn tests.support.web_app:app
"""

from __future__ import annotations

import os

import openai
from fastapi import FastAPI

from otel_tokens import usage_context

app = FastAPI()
_client = openai.OpenAI(base_url=os.environ["MODEL_URL"], api_key="x", max_retries=0)


def _chat() -> dict[str, int]:
    reply = _client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hello there"}])
    return {"tokens": reply.usage.total_tokens if reply.usage else 0}


@app.post("/chat")
def chat() -> dict[str, int]:
    return _chat()


@app.post("/chat-as-app")
async def chat_as_app() -> dict[str, int]:
    with usage_context(user_id="service-account", department="platform"):  # the app's own word wins
        return _chat()
